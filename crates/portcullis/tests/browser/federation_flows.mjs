// Federation, as one person meets it in Chromium: an external identity provider (upstream_idp.mjs,
// node-oidc-provider on loopback), Portcullis signing people in through it (the upstream `corp`,
// "Sign in with Corp" on its sign-in page) and providing for the two example applications of
// examples/ (A: rp-axum, B: rp-node). Started by crates/portcullis/tests/federation_flows.rs,
// which serves Portcullis (HTTPS, self-signed, provider and federation on), starts the provider
// and both applications (back-channel logout included), and runs a control server (the person's
// sessions, account and links at Portcullis, the clock, the sweeper, the back-channel deliverer).
//
// At every step the three kinds of session are checked: the external provider's (its `_session`
// cookie in this browser, and whether its login form appears), Portcullis's SSO session (the
// control server) and each application's own (its /session.json).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";

const BASE = process.env.PORTCULLIS_URL;
const CONTROL = process.env.CONTROL_URL;
const UPSTREAM = process.env.UPSTREAM_URL;
const ARTIFACTS = process.env.ARTIFACTS;
const A = { url: process.env.APP_A_URL, clientId: process.env.APP_A_CLIENT_ID, name: "Shop (axum)", cookie: "rp-axum-session" };
const B = { url: process.env.APP_B_URL, clientId: process.env.APP_B_CLIENT_ID, name: "Notes (Node)", cookie: "rp-node-session" };
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
];
// The name typed into the external provider's login form: its `sub` and `preferred_username`,
// so the username of the account Portcullis makes on the first sign-in.
const PERSON = "olivia";
const UPSTREAM_PASSWORD = "whatever the corporate provider checks";
// The cookies that hold each session.
const UPSTREAM_SESSION_COOKIE = "_session"; // node-oidc-provider's
const SSO_COOKIE = "__Host-portcullis";
mkdirSync(ARTIFACTS, { recursive: true });

async function control(method, path, body) {
  const response = await fetch(CONTROL + path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(response.ok, `control ${path}: ${response.status}`);
  return response.json();
}
const sessionsOf = () => control("GET", `/sessions?username=${PERSON}`);
const deliveriesOf = () => control("GET", `/deliveries?username=${PERSON}`);
/** The person's account at Portcullis, its links, and its live SSO sessions with the upstream
 * session each remembers. */
const federated = () => control("GET", `/federated?username=${PERSON}`);

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
// Portcullis's certificate is self-signed; the provider and the applications are plain http on
// loopback.
const context = await browser.newContext({ ignoreHTTPSErrors: true });
// The provider's pages @import a web font: nothing leaves this machine.
await context.route(
  (url) => !["localhost", "127.0.0.1"].includes(url.hostname),
  (route) => route.abort(),
);
const page = await context.newPage();
// Nothing here waits for a clock: a navigation that does not arrive failed.
page.setDefaultTimeout(15_000);

async function shot(name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** What an application's /session.json says about this browser (its cookies sent along). */
async function localSession(app) {
  const response = await context.request.get(`${app.url}/session.json`);
  assert.equal(response.status(), 200);
  return response.json();
}

/** The external provider's session cookie in this browser, if any (cookies are per host, not
 * per port: the applications' share 127.0.0.1, under other names). */
async function upstreamSession() {
  const cookies = await context.cookies(UPSTREAM);
  return cookies.find((c) => c.name === UPSTREAM_SESSION_COOKIE && c.value !== "");
}

/** The names a `Set-Cookie` header sets to a value (not the ones it clears). */
function cookiesSet(headerValues) {
  const set = [];
  for (const line of headerValues) {
    const [pair, ...attributes] = line.split(";");
    const eq = pair.indexOf("=");
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const cleared = value === "" || attributes.some((a) => {
      const [k, v] = a.trim().split("=");
      return (k.toLowerCase() === "max-age" && Number(v) <= 0)
        || (k.toLowerCase() === "expires" && Date.parse(a.trim().slice(8)) < Date.now() - 86_400_000);
    });
    if (!cleared) set.push(name);
  }
  return set;
}

/** Every request of the main frame while `run` ran (redirects included: each is a request of
 * its own) with the cookies its answer set, in order; and every request of any kind. */
async function traced(run) {
  const navigations = [];
  const everything = [];
  const onRequest = (request) => {
    everything.push(request.url());
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) {
      navigations.push({ request, url: request.url(), method: request.method() });
    }
  };
  page.on("request", onRequest);
  try {
    await run();
  } finally {
    page.off("request", onRequest);
  }
  for (const step of navigations) {
    const response = await step.request.response();
    step.status = response?.status();
    step.sets = response ? cookiesSet(await response.headerValues("set-cookie")) : [];
    delete step.request;
  }
  return { navigations, everything };
}

const describe = (navigations) =>
  navigations.map((n) => `${n.method} ${n.url.split("?")[0]} ${n.status} [${n.sets.join(",")}]`).join("\n  → ");

/** The index of the first step whose answer set cookie `name` from `origin`. */
function whereSet(navigations, origin, name) {
  return navigations.findIndex((n) => n.url.startsWith(origin) && n.sets.includes(name));
}

/** From `app`'s page with nobody signed in there: its sign-in button, then Portcullis's sign-in
 * page (no SSO session), then "Sign in with Corp". Answers with the trace of everything from the
 * click on "Sign in with Corp" until `untilThere` is done. */
async function signInWithCorp(app, screenshots, untilThere) {
  await page.goto(`${app.url}/`);
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  assert.equal(await page.locator("header").innerText(), app.name);
  if (screenshots?.app) await shot(screenshots.app);
  await page.click("#sign-in");
  await page.waitForURL((u) => u.href.startsWith(`${BASE}/login?return_to=`));
  const corp = page.getByRole("link", { name: "Sign in with Corp" });
  await corp.waitFor();
  if (screenshots?.portcullis) await shot(screenshots.portcullis);
  return traced(async () => {
    await corp.click();
    await untilThere();
  });
}

/** Back at `app`, signed in as the person by Portcullis. */
async function signedInAt(app) {
  await page.waitForURL(`${app.url}/`);
  await page.getByRole("heading", { name: "Signed in" }).waitFor();
  assert.equal(await page.locator("#who").innerText(), PERSON, `${app.name} shows the person (userinfo)`);
  const session = await localSession(app);
  assert.equal(session.signed_in, true, JSON.stringify(session));
  assert.equal(session.name, PERSON);
  assert.match(session.sub, /\S/);
  assert.match(session.sid, /\S/, "the ID token named the SSO session");
  return session;
}

/** At Portcullis: the SSO session `sid` and one session under it of each of `apps`, nothing
 * else. Returns the applications' sessions' ids. */
async function sessionTree(sid, apps) {
  const { live } = await sessionsOf();
  const sso = live.find((s) => s.id === sid);
  assert.ok(sso, `the SSO session is live: ${JSON.stringify(live)}`);
  assert.equal(sso.application, "portcullis");
  assert.equal(sso.parent, null);
  for (const app of apps) {
    const children = live.filter((s) => s.application === app.clientId);
    assert.equal(children.length, 1, `one session of ${app.name}: ${JSON.stringify(live)}`);
    assert.equal(children[0].parent, sid, `${app.name}'s session is a child of the SSO session`);
  }
  assert.equal(live.length, 1 + apps.length, JSON.stringify(live));
  return live.filter((s) => s.parent === sid).map((s) => s.id);
}

/** The person's one live SSO session at Portcullis, vouched for by the external provider. */
async function theSsoSession() {
  const account = await federated();
  assert.equal(account.account, true);
  assert.equal(account.sso.length, 1, JSON.stringify(account));
  const [sso] = account.sso;
  assert.equal(sso.upstream?.provider, "corp", JSON.stringify(sso));
  assert.equal(sso.upstream.issuer, UPSTREAM);
  assert.equal(sso.upstream.subject, PERSON);
  assert.match(sso.upstream.sid ?? "", /\S/, `the upstream named its session: ${JSON.stringify(sso)}`);
  return { account, sso };
}

/** One pass of Portcullis's back-channel logout deliverer: both applications' sessions under
 * the ended SSO session (`children`) are told why each ended, each application answers 200 and
 * ends its own session. */
async function backChannelDelivered(children) {
  const report = await control("POST", "/deliver");
  assert.deepEqual(report, { delivered: children.length, retried: 0, failed: 0 }, JSON.stringify(report));
  const deliveries = await deliveriesOf();
  const { ended } = await sessionsOf();
  for (const child of children) {
    const delivery = deliveries.find((d) => d.session === child);
    assert.ok(delivery, `a delivery for ${child}: ${JSON.stringify(deliveries)}`);
    assert.equal(delivery.state, "delivered", JSON.stringify(delivery));
    const why = ended.find((e) => e.session === child);
    assert.equal(delivery.reason, why?.reason, `why it ended: ${JSON.stringify(delivery)} ${JSON.stringify(why)}`);
  }
  for (const app of [A, B]) {
    assert.deepEqual(await localSession(app), { signed_in: false }, `${app.name} ended its own session`);
  }
}

/** Single sign-on at `app` while the SSO session lives: through Portcullis's authorization
 * endpoint and straight back; neither Portcullis's sign-in page nor the external provider. */
async function singleSignOn(app, expected, screenshots) {
  await page.goto(`${app.url}/`);
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  if (screenshots?.before) await shot(screenshots.before);
  const { navigations, everything } = await traced(async () => {
    await page.click("#sign-in");
    await signedInAt(app);
  });
  assert.ok(
    navigations.some((n) => n.url.startsWith(`${BASE}/oidc/authorize?`)),
    `through Portcullis: ${describe(navigations)}`,
  );
  assert.ok(
    navigations.every((n) => !n.url.startsWith(BASE) || n.url.startsWith(`${BASE}/oidc/authorize?`)),
    `no sign-in page on the way: ${describe(navigations)}`,
  );
  assert.ok(everything.every((u) => !u.startsWith(UPSTREAM)), `no request to the external provider: ${everything.join(" ")}`);
  if (screenshots?.after) await shot(screenshots.after);
  const session = await localSession(app);
  assert.equal(session.sub, expected.sub, "the same person");
  assert.equal(session.sid, expected.sid, "under the same SSO session");
  return session;
}

const scenarios = [];
const scenario = (name, run) => scenarios.push({ name, run });
const shared = {};

scenario("1_flow_1_no_session_anywhere_the_person_authenticates_at_the_external_provider", async () => {
  // Nothing anywhere: no cookie in the browser, no account at Portcullis, no application session.
  assert.deepEqual(await context.cookies(), []);
  assert.deepEqual(await federated(), { account: false });
  for (const app of [A, B]) assert.deepEqual(await localSession(app), { signed_in: false });

  const first = await signInWithCorp(
    A,
    { app: "01-application-a-not-signed-in", portcullis: "02-portcullis-sign-in-with-corp" },
    async () => {
      await page.waitForURL((u) => u.href.startsWith(`${UPSTREAM}/interaction/`));
      await page.locator("input[name=login]").waitFor();
    },
  );
  assert.ok(
    first.navigations.some((n) => n.url.startsWith(`${BASE}/login/upstream/corp?`)),
    describe(first.navigations),
  );
  const authorize = first.navigations.find((n) => n.url.startsWith(`${UPSTREAM}/auth?`));
  assert.ok(authorize, `Portcullis sent the browser to the provider: ${describe(first.navigations)}`);
  const request = new URL(authorize.url).searchParams;
  assert.equal(request.get("client_id"), "portcullis");
  assert.equal(request.get("redirect_uri"), `${BASE}/login/upstream/corp/callback`);
  assert.equal(request.get("code_challenge_method"), "S256");
  assert.equal(await upstreamSession(), undefined, "no session at the provider before the person signs in there");
  assert.equal((await federated()).account, false);
  await shot("03-external-provider-asks-for-credentials");

  await page.fill("input[name=login]", PERSON);
  await page.fill("input[name=password]", UPSTREAM_PASSWORD);
  const { navigations } = await traced(async () => {
    await page.click("button[type=submit]");
    shared.first = await signedInAt(A);
  });
  await shot("04-application-a-signed-in-through-corp");

  // The sessions were made in this order: at the provider, at Portcullis, at the application.
  const upstreamAt = whereSet(navigations, UPSTREAM, UPSTREAM_SESSION_COOKIE);
  const ssoAt = whereSet(navigations, BASE, SSO_COOKIE);
  const appAt = whereSet(navigations, A.url, A.cookie);
  const chain = describe(navigations);
  assert.ok(upstreamAt >= 0, `the provider set its session cookie: ${chain}`);
  assert.ok(ssoAt > upstreamAt, `then Portcullis its SSO cookie: ${chain}`);
  assert.ok(navigations[ssoAt].url.startsWith(`${BASE}/login/upstream/corp/callback?`), chain);
  assert.ok(appAt > ssoAt, `then the application its session cookie: ${chain}`);
  assert.ok(navigations[appAt].url.startsWith(`${A.url}/callback?`), chain);
  console.log(`     flow 1: ${chain}`);

  // And they all exist now.
  assert.ok(await upstreamSession(), "a session at the provider");
  const { account, sso } = await theSsoSession();
  assert.equal(account.has_password, false, "an account made without a password");
  assert.deepEqual(account.identities, [{ provider: "corp", issuer: UPSTREAM, subject: PERSON }]);
  assert.ok(sso.auth.methods.length > 0, JSON.stringify(sso.auth));
  assert.equal(shared.first.sid, sso.id, "the application's session is under this SSO session");
  shared.account = account.id;
  shared.upstreamSid = sso.upstream.sid;
  shared.upstreamAuthTime = sso.upstream.auth_time;
  console.log(`     upstream session ${sso.upstream.sid}, auth_time ${sso.upstream.auth_time}, Portcullis auth ${JSON.stringify(sso.auth)}`);
  await sessionTree(sso.id, [A]);
  assert.deepEqual(await localSession(B), { signed_in: false }, "B has no session yet");
});

scenario("2_flow_3_an_sso_session_the_second_application_signs_in_without_the_external_provider", async () => {
  await singleSignOn(B, shared.first, {
    before: "05-application-b-not-signed-in",
    after: "06-application-b-signed-in-by-single-sign-on",
  });
  const { sso } = await theSsoSession();
  assert.equal(sso.id, shared.first.sid, "the same SSO session");
  assert.equal(sso.upstream.sid, shared.upstreamSid, "vouched for by the same upstream session");
  shared.children = await sessionTree(sso.id, [A, B]);
  assert.ok(await upstreamSession());
});

scenario("3_flow_4_an_application_session_nothing_is_asked_of_anyone", async () => {
  for (const [app, screenshot] of [[A, "07-application-a-its-own-session"], [B, "08-application-b-its-own-session"]]) {
    const { everything } = await traced(async () => {
      await page.goto(`${app.url}/`);
      await page.getByRole("heading", { name: "Signed in" }).waitFor();
    });
    assert.ok(
      everything.every((u) => u.startsWith(`${app.url}/`)),
      `only ${app.name} was asked: ${everything.join(" ")}`,
    );
    assert.equal(await page.locator("#who").innerText(), PERSON);
    assert.equal(await page.locator("#sid").innerText(), shared.first.sid);
    await shot(screenshot);
  }
  assert.deepEqual(await sessionTree(shared.first.sid, [A, B]), shared.children, "nothing new at Portcullis");
});

scenario("4_the_sso_sessions_idle_expiry_notifies_both_applications", async () => {
  await control("POST", "/clock/advance?ms=31000"); // past the 30 s idle timeout
  const { expired } = await control("POST", "/sweep");
  assert.ok(expired >= 1, `the sweeper ended the SSO session: ${expired}`);
  const { live, ended } = await sessionsOf();
  assert.deepEqual(live, [], "nothing of the person is live at Portcullis");
  assert.ok(ended.some((e) => e.session === shared.first.sid && e.reason === "expired_idle"), JSON.stringify(ended));
  // The applications' sessions at Portcullis end with it; being as idle, the same sweep may
  // find one of them past its own idle timeout first.
  for (const child of shared.children) {
    assert.ok(
      ended.some((e) => e.session === child && ["parent_ended", "expired_idle"].includes(e.reason)),
      JSON.stringify(ended),
    );
  }
  // Each application's session is its own until Portcullis tells it.
  assert.equal((await localSession(A)).signed_in, true);
  await backChannelDelivered(shared.children);
  assert.ok(await upstreamSession(), "the provider's session lives on");
  await page.goto(`${A.url}/`);
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  await shot("09-application-a-signed-out-by-the-sso-idle-timeout");
});

scenario("5_flow_2_only_the_external_session_no_credentials_are_asked", async () => {
  const upstreamBefore = await upstreamSession();
  const { navigations } = await signInWithCorp(A, { portcullis: "10-portcullis-sign-in-again" }, async () => {
    shared.second = await signedInAt(A);
  });
  const chain = describe(navigations);
  console.log(`     flow 2: ${chain}`);
  assert.ok(navigations.some((n) => n.url.startsWith(`${UPSTREAM}/auth?`)), `through the provider: ${chain}`);
  assert.ok(
    navigations.every((n) => !n.url.startsWith(`${UPSTREAM}/interaction/`)),
    `the provider asked nothing (no login form): ${chain}`,
  );
  const ssoAt = whereSet(navigations, BASE, SSO_COOKIE);
  const appAt = whereSet(navigations, A.url, A.cookie);
  assert.ok(ssoAt >= 0 && navigations[ssoAt].url.startsWith(`${BASE}/login/upstream/corp/callback?`), chain);
  assert.ok(appAt > ssoAt, `the SSO session, then the application's: ${chain}`);
  await shot("11-application-a-signed-in-without-credentials");

  assert.equal((await upstreamSession())?.value, upstreamBefore.value, "the same session at the provider");
  const { account, sso } = await theSsoSession();
  assert.equal(account.id, shared.account, "the same account");
  assert.equal(account.identities.length, 1, "no new link");
  assert.equal(sso.upstream.sid, shared.upstreamSid, "vouched for by the same upstream session");
  // When the provider says when the person authenticated there, it is still the first time.
  assert.equal(sso.upstream.auth_time, shared.upstreamAuthTime, "authenticated upstream once");
  assert.notEqual(sso.id, shared.first.sid, "a new SSO session");
  assert.equal(shared.second.sid, sso.id);
  assert.equal(shared.second.sub, shared.first.sub, "the same person at the application");
  await sessionTree(sso.id, [A]);
  // And single sign-on at B again, for the logout that follows.
  await singleSignOn(B, shared.second);
  shared.children = await sessionTree(sso.id, [A, B]);
});

scenario("6_logout_at_the_external_provider_ends_the_sso_session_and_both_applications", async () => {
  await page.goto(`${UPSTREAM}/session/end`);
  const confirm = page.locator("button[name=logout][value=yes]");
  await confirm.waitFor();
  await shot("12-external-provider-sign-out");
  await confirm.click();
  await page.getByRole("heading", { name: "Sign-out Success" }).waitFor();
  await shot("13-external-provider-signed-out");
  assert.equal(await upstreamSession(), undefined, "no session at the provider");

  // The provider's back-channel logout reached Portcullis (it is posted before the provider
  // answers the confirmation, but wait for it rather than rely on that).
  let sessions;
  for (let i = 0; i < 50; i += 1) {
    sessions = await sessionsOf();
    if (sessions.live.length === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(sessions.live, [], "the SSO session and its children ended");
  assert.ok(
    sessions.ended.some((e) => e.session === shared.second.sid && e.reason === "upstream_logout"),
    JSON.stringify(sessions.ended),
  );
  for (const child of shared.children) {
    assert.ok(sessions.ended.some((e) => e.session === child && e.reason === "parent_ended"), JSON.stringify(sessions.ended));
  }
  assert.deepEqual((await federated()).sso, []);
  await backChannelDelivered(shared.children);
  await page.goto(`${B.url}/`);
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  await shot("14-application-b-signed-out-by-the-external-logout");
});

scenario("7_after_the_external_logout_the_external_provider_asks_again", async () => {
  await signInWithCorp(A, null, async () => {
    await page.waitForURL((u) => u.href.startsWith(`${UPSTREAM}/interaction/`));
    await page.locator("input[name=login]").waitFor();
  });
  await shot("15-external-provider-asks-for-credentials-again");
  await page.fill("input[name=login]", PERSON);
  await page.fill("input[name=password]", UPSTREAM_PASSWORD);
  await page.click("button[type=submit]");
  const third = await signedInAt(A);
  assert.equal(third.sub, shared.first.sub, "the same person");
  const { account, sso } = await theSsoSession();
  assert.equal(account.id, shared.account, "the same account");
  assert.notEqual(sso.upstream.sid, shared.upstreamSid, "a new upstream session");
  await sessionTree(sso.id, [A]);
});

scenario("8_logout_from_an_application_asking_for_the_external_provider_too", async () => {
  // The person is signed in at A (scenario 7) and, by single sign-on, at B.
  const third = await localSession(A);
  await singleSignOn(B, third);
  const { sso } = await theSsoSession();
  const children = await sessionTree(sso.id, [A, B]);
  assert.ok(await upstreamSession(), "a session at the provider");

  // B's "Sign out everywhere": its session ends, then RP-initiated logout at Portcullis with
  // `federated`; Portcullis ends the SSO session and its children and passes the browser to the
  // provider's end-session endpoint, which asks the person.
  await page.goto(`${B.url}/`);
  const { navigations } = await traced(async () => {
    await page.click("#sign-out-everywhere");
    await page.locator("button[name=logout][value=yes]").waitFor();
  });
  const chain = describe(navigations);
  console.log(`     global logout: ${chain}`);
  const atPortcullis = navigations.find((n) => n.url.startsWith(`${BASE}/oidc/logout?`));
  assert.ok(atPortcullis, `through Portcullis's end-session endpoint: ${chain}`);
  assert.ok(new URL(atPortcullis.url).searchParams.has("federated"), atPortcullis.url);
  assert.ok(navigations.some((n) => n.url.startsWith(`${UPSTREAM}/session/end`)), `on to the provider: ${chain}`);
  await shot("16-external-provider-asks-to-sign-out-after-a-global-logout");
  const { live, ended } = await sessionsOf();
  assert.deepEqual(live, [], "the SSO session and both applications' sessions at Portcullis ended");
  assert.ok(ended.some((e) => e.session === sso.id && e.reason === "logout"), JSON.stringify(ended));
  for (const child of children) {
    assert.ok(ended.some((e) => e.session === child && e.reason === "parent_ended"), JSON.stringify(ended));
  }
  assert.deepEqual(await localSession(B), { signed_in: false }, "B ended its own session first");

  // The person confirms at the provider: its session ends, and the browser comes back through
  // Portcullis to B.
  await page.click("button[name=logout][value=yes]");
  await page.waitForURL((u) => u.href.startsWith(`${B.url}/signed-out`));
  assert.match(await page.locator("#signed-out").innerText(), /of this application and of Portcullis/);
  await shot("17-application-b-signed-out-everywhere");
  assert.equal(await upstreamSession(), undefined, "no session at the provider");
  // A is told by back-channel logout, as after any ending.
  await backChannelDelivered(children);
});

let failed = 0;
for (const { name, run } of scenarios) {
  const started = Date.now();
  try {
    await run();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed += 1;
    console.log(`FAIL ${name}: ${error.stack || error}`);
    const body = await page.locator("body").innerText({ timeout: 1000 }).catch(() => "(no body)");
    console.log(`  page ${page.url()}: ${body.replace(/\s+/g, " ").slice(0, 300)}`);
    await shot(`failed-${name}`).catch(() => {});
    break; // each scenario builds on the one before
  }
}
await browser.close();
if (failed) {
  console.log("the federation flows failed");
  process.exit(1);
}
console.log(`all federation flows passed (${scenarios.length})`);
