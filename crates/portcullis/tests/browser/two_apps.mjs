// Two applications, one Portcullis: the example applications of examples/ (A: rp-axum, B:
// rp-node), each a confidential client with its own sessions, used by one person in Chromium.
// Started by crates/portcullis/tests/two_apps.rs, which serves Portcullis (HTTPS, self-signed,
// provider on), starts and registers both applications (back-channel logout included), and
// runs a control server (add a person, read their sessions and deliveries at Portcullis, move
// the clock, sweep, deliver logout tokens).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";

const BASE = process.env.PORTCULLIS_URL;
const CONTROL = process.env.CONTROL_URL;
const ARTIFACTS = process.env.ARTIFACTS;
const A = { url: process.env.APP_A_URL, clientId: process.env.APP_A_CLIENT_ID, name: "Shop (axum)" };
const B = { url: process.env.APP_B_URL, clientId: process.env.APP_B_CLIENT_ID, name: "Notes (Node)" };
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
];
const USERNAME = "olivia";
const PASSWORD = "correct horse battery";
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
const sessionsOf = (username) => control("GET", `/sessions?username=${username}`);
const deliveriesOf = (username) => control("GET", `/deliveries?username=${username}`);

/** One pass of Portcullis's back-channel logout deliverer: both applications' sessions under
 * `sid` (`children`) are told, each application answers 200, and each ends its own session. */
async function backChannelDelivered(children, ...reasons) {
  const report = await control("POST", "/deliver");
  assert.deepEqual(report, { delivered: children.length, retried: 0, failed: 0 }, JSON.stringify(report));
  const deliveries = await deliveriesOf(USERNAME);
  for (const child of children) {
    const delivery = deliveries.find((d) => d.session === child);
    assert.ok(delivery, `a delivery for ${child}: ${JSON.stringify(deliveries)}`);
    assert.equal(delivery.state, "delivered", JSON.stringify(delivery));
    assert.ok(reasons.includes(delivery.reason), JSON.stringify(delivery));
    assert.equal(delivery.attempts, 1);
  }
  for (const app of [A, B]) {
    assert.deepEqual(await localSession(app), { signed_in: false }, `${app.name} ended its own session`);
  }
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
// Portcullis's certificate is self-signed; the applications are plain http on loopback.
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
// Nothing here waits for a clock: a navigation that does not arrive failed.
page.setDefaultTimeout(15_000);

async function shot(name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** What an application's /session.json says about this browser (its cookies sent along). */
async function localSession(app, requestContext = context.request) {
  const response = await requestContext.get(`${app.url}/session.json`);
  assert.equal(response.status(), 200);
  assert.equal(response.headers()["cache-control"], "no-store");
  return response.json();
}

/** Every URL the main frame requested while `run` ran, redirects included (a redirect is a
 * new request, though only the last page of a chain is ever shown). */
async function visitedDuring(run) {
  const visited = [];
  const listener = (request) => {
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) visited.push(request.url());
  };
  page.on("request", listener);
  try {
    await run();
  } finally {
    page.off("request", listener);
  }
  return visited;
}

/** Signs in at `app` with the password: from its page when nobody is signed in there, else by
 * going to its /login (a sign-in always begins a new session of the application). */
async function signInWithPassword(app, screenshots) {
  await page.goto(`${app.url}/`);
  assert.equal(await page.locator("header").innerText(), app.name);
  if (await page.getByRole("heading", { name: "Not signed in" }).isVisible()) {
    if (screenshots) await shot(screenshots.before);
    await page.click("#sign-in");
  } else {
    await page.goto(`${app.url}/login`);
  }
  await page.waitForURL((u) => u.href.startsWith(`${BASE}/login?return_to=`));
  await page.locator("#username").waitFor();
  if (screenshots) await shot(screenshots.portcullis);
  await page.fill("#username", USERNAME);
  await page.fill("#password", PASSWORD);
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/login\/stay$/);
  await page.click("#stay-no");

  await page.waitForURL(`${app.url}/`);
  await page.getByRole("heading", { name: "Signed in" }).waitFor();
  assert.equal(await page.locator("#who").innerText(), USERNAME, `${app.name} shows the person (userinfo)`);
  if (screenshots) await shot(screenshots.after);

  const session = await localSession(app);
  assert.equal(session.signed_in, true, JSON.stringify(session));
  assert.equal(session.name, USERNAME);
  assert.match(session.sub, /\S/);
  assert.match(session.sid, /\S/, "the ID token named the SSO session");
  assert.equal(await page.locator("#sid").innerText(), session.sid);
  return session;
}

/** Signs in at `app` from its page while the SSO session lives: through Portcullis's
 * authorization endpoint and straight back, no sign-in page. */
async function singleSignOn(app, expected, screenshot) {
  await page.goto(`${app.url}/`);
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  assert.equal(await page.locator("header").innerText(), app.name);
  const visited = await visitedDuring(async () => {
    await page.click("#sign-in");
    await page.waitForURL(`${app.url}/`);
    await page.getByRole("heading", { name: "Signed in" }).waitFor();
  });
  assert.ok(
    visited.some((u) => u.startsWith(`${BASE}/oidc/authorize?`)),
    `through Portcullis: ${visited.join(" → ")}`,
  );
  assert.ok(
    visited.every((u) => !u.startsWith(BASE) || u.startsWith(`${BASE}/oidc/authorize?`)),
    `no sign-in page on the way: ${visited.join(" → ")}`,
  );
  assert.equal(await page.locator("#who").innerText(), USERNAME);
  if (screenshot) await shot(screenshot);

  const session = await localSession(app);
  assert.equal(session.signed_in, true, JSON.stringify(session));
  assert.equal(session.sub, expected.sub, "the same person");
  assert.equal(session.sid, expected.sid, "under the same SSO session");
}

/** At Portcullis: the SSO session `sid` and one session of each application under it, and
 * nothing else. Returns the applications' sessions' ids. */
async function oneSessionTree(sid) {
  const { live } = await sessionsOf(USERNAME);
  const sso = live.find((s) => s.id === sid);
  assert.ok(sso, `the SSO session is live: ${JSON.stringify(live)}`);
  assert.equal(sso.application, "portcullis");
  assert.equal(sso.parent, null);
  for (const app of [A, B]) {
    const children = live.filter((s) => s.application === app.clientId);
    assert.equal(children.length, 1, `one session of ${app.name}: ${JSON.stringify(live)}`);
    assert.equal(children[0].parent, sid, `${app.name}'s session is a child of the SSO session`);
  }
  assert.equal(live.length, 3, JSON.stringify(live));
  return live.filter((s) => s.parent === sid).map((s) => s.id);
}

/** Signs out at `app` (RP-initiated logout); back-channel logout then ends `other`'s own
 * session too. */
async function signOut(app, other, sid, children, screenshot) {
  await page.goto(`${app.url}/`);
  await page.getByRole("heading", { name: "Signed in" }).waitFor();
  const visited = await visitedDuring(async () => {
    await page.click("#sign-out");
    await page.waitForURL((u) => u.href.startsWith(`${app.url}/signed-out`));
    await page.getByRole("heading", { name: "Signed out" }).waitFor();
  });
  // OIDC-RPL-3/5: the application's ID token names this browser's SSO session, so Portcullis
  // signed out without asking; OIDC-RPL-8: the state came back unchanged (the application
  // says "and of Portcullis" only when it did).
  const logout = visited.find((u) => u.startsWith(`${BASE}/oidc/logout?`));
  assert.ok(logout, `through Portcullis's end_session_endpoint: ${visited.join(" → ")}`);
  assert.ok(
    visited.every((u) => !u.startsWith(BASE) || u === logout),
    `no confirmation page on the way: ${visited.join(" → ")}`,
  );
  const request = new URL(logout).searchParams;
  assert.match(request.get("id_token_hint"), /^[\w-]+\.[\w-]+\.[\w-]+$/);
  assert.equal(request.get("post_logout_redirect_uri"), `${app.url}/signed-out`);
  const state = request.get("state");
  assert.match(state, /\S/);
  assert.equal(new URL(page.url()).searchParams.get("state"), state);
  assert.equal(
    await page.locator("#signed-out").innerText(),
    "You are signed out of this application and of Portcullis.",
  );
  if (screenshot) await shot(screenshot);

  assert.deepEqual(await localSession(app), { signed_in: false }, `${app.name}'s own session ended`);
  const { live, ended } = await sessionsOf(USERNAME);
  assert.deepEqual(live, [], "nothing of the person is live at Portcullis");
  assert.ok(ended.some((e) => e.session === sid && e.reason === "logout"), JSON.stringify(ended));
  for (const child of children) {
    assert.ok(
      ended.some((e) => e.session === child && e.reason === "parent_ended"),
      `${child} ended parent_ended: ${JSON.stringify(ended)}`,
    );
  }
  // The other application's own session is its own: until Portcullis tells it.
  assert.equal((await localSession(other)).signed_in, true);
  await backChannelDelivered(children, "parent_ended");
}

/** `prompt=none` at `app` after the SSO session ended: login_required, shown by the app. */
async function silentlyLoginRequired(app, screenshot) {
  await page.goto(`${app.url}/login?prompt=none`);
  await page.waitForURL((u) => u.href.startsWith(`${app.url}/callback?`));
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  const callback = new URL(page.url());
  assert.equal(callback.searchParams.get("error"), "login_required");
  assert.equal(callback.searchParams.get("iss"), BASE, "RFC 9207 iss in the response");
  assert.equal(await page.locator("#error").innerText(), "login_required");
  if (screenshot) await shot(screenshot);
}

const scenarios = [];
const scenario = (name, run) => scenarios.push({ name, run });
const shared = {};

scenario("1_sign_in_at_application_a_with_a_password", async () => {
  await control("POST", "/users", { username: USERNAME, password: PASSWORD });
  shared.first = await signInWithPassword(A, {
    before: "01-application-a-not-signed-in",
    portcullis: "02-portcullis-sign-in",
    after: "03-application-a-signed-in",
  });
});

scenario("2_single_sign_on_at_application_b_without_a_password", async () => {
  await singleSignOn(B, shared.first, "04-application-b-signed-in-by-single-sign-on");
});

scenario("3_each_application_has_its_own_session_under_one_sso_session", async () => {
  // Each application's session is its own cookie: another browser has neither.
  const names = (await context.cookies()).map((c) => c.name);
  assert.ok(names.includes("rp-axum-session"), names.join(", "));
  assert.ok(names.includes("rp-node-session"), names.join(", "));
  const stranger = await browser.newContext();
  for (const app of [A, B]) {
    assert.deepEqual(await localSession(app, stranger.request), { signed_in: false });
  }
  await stranger.close();
  shared.children = await oneSessionTree(shared.first.sid);
});

scenario("4_sign_out_at_application_a_ends_its_session_and_the_sso_session", async () => {
  await signOut(A, B, shared.first.sid, shared.children, "05-application-a-signed-out");
});

scenario("5_application_b_asking_silently_gets_login_required", async () => {
  await silentlyLoginRequired(B, "06-application-b-prompt-none-login-required");
});

// The same with the roles swapped: each example signs in first, follows, signs out and asks
// silently once.
scenario("6_sign_in_again_at_application_b_single_sign_on_at_a", async () => {
  const second = await signInWithPassword(B);
  assert.notEqual(second.sid, shared.first.sid, "a new SSO session");
  await singleSignOn(A, second, "07-application-a-signed-in-by-single-sign-on");
  shared.second = second;
  shared.children = await oneSessionTree(second.sid);
});

scenario("7_sign_out_at_application_b_then_application_a_asking_silently_gets_login_required", async () => {
  await signOut(B, A, shared.second.sid, shared.children, "08-application-b-signed-out");
  await silentlyLoginRequired(A, "09-application-a-prompt-none-login-required");
});

scenario("8_the_sso_sessions_idle_timeout_signs_both_applications_out", async () => {
  const third = await signInWithPassword(A);
  await singleSignOn(B, third);
  const children = await oneSessionTree(third.sid);
  await control("POST", "/clock/advance?ms=31000"); // past the 30 s idle timeout
  const { expired } = await control("POST", "/sweep");
  assert.ok(expired >= 1, `the sweeper ended the SSO session: ${expired}`);
  const { live, ended } = await sessionsOf(USERNAME);
  assert.deepEqual(live, []);
  assert.ok(ended.some((e) => e.session === third.sid && e.reason === "expired_idle"), JSON.stringify(ended));
  // The applications' sessions have the same 30 s idle timeout and were made at the same
  // (manual) time as the SSO session: the sweeper may reach one of them before its parent, and
  // then it ends on its own deadline. Either way both applications are told.
  await backChannelDelivered(children, "parent_ended", "expired_idle");
  await page.goto(`${A.url}/`);
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  await shot("10-application-a-signed-out-by-the-idle-timeout");
});

scenario("9_a_password_change_that_signs_out_everywhere_else_signs_both_applications_out", async () => {
  const fourth = await signInWithPassword(A);
  await singleSignOn(B, fourth);
  const children = await oneSessionTree(fourth.sid);
  // Somewhere else, the person changes the password and signs out everywhere else.
  const elsewhere = await browser.newContext({ ignoreHTTPSErrors: true });
  const account = await elsewhere.newPage();
  account.setDefaultTimeout(15_000);
  await account.goto(`${BASE}/login?return_to=${encodeURIComponent("/account/password")}`);
  await account.fill("#username", USERNAME);
  await account.fill("#password", PASSWORD);
  await account.click("main button[type=submit]");
  await account.waitForURL(/\/login\/stay$/);
  await account.click("#stay-no");
  await account.waitForURL(/\/account\/password$/);
  assert.ok(await account.isChecked("#sign-out-others"), "sign out everywhere else is checked");
  await account.fill("#current-password", PASSWORD);
  await account.fill("#new-password", "an even better passphrase 2");
  await account.fill("#confirm-password", "an even better passphrase 2");
  await account.click("main button[type=submit]");
  await account.waitForURL(/done=password_others/);
  await elsewhere.close();
  const { ended } = await sessionsOf(USERNAME);
  assert.ok(ended.some((e) => e.session === fourth.sid && e.reason === "password_changed"), JSON.stringify(ended));
  await backChannelDelivered(children, "parent_ended");
  await page.goto(`${B.url}/`);
  await page.getByRole("heading", { name: "Not signed in" }).waitFor();
  await shot("11-application-b-signed-out-by-the-password-change");
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
    const main = await page.locator("main").innerText({ timeout: 1000 }).catch(() => "(no main)");
    console.log(`  page ${page.url()}: ${main.replace(/\s+/g, " ").slice(0, 300)}`);
    await shot(`failed-${name}`).catch(() => {});
    break; // each scenario builds on the one before
  }
}
await browser.close();
if (failed) {
  console.log("the two-application scenarios failed");
  process.exit(1);
}
console.log(`all two-application scenarios passed (${scenarios.length})`);
