// Portcullis as an OpenID Connect provider, used by a relying party nobody here wrote:
// openid-client (certified) does discovery, the authorization URL (PKCE, state, nonce), the
// code exchange with its ID token checks, userinfo, refresh, revocation and introspection;
// Chromium is the person's browser. Started by crates/portcullis/tests/oidc_clients.rs, which
// serves Portcullis (HTTPS, self-signed, manual clock, provider on), registers the clients and
// runs a control server (clock, users, sessions) that also serves the clients' callback page.
import * as oidc from "openid-client";
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";

const BASE = process.env.PORTCULLIS_URL;
const CONTROL = process.env.CONTROL_URL;
const ARTIFACTS = process.env.ARTIFACTS;
const CLIENTS = JSON.parse(process.env.CLIENTS);
const REDIRECT_URI = CLIENTS.redirect_uri;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
];
const PASSWORD = "correct horse battery";
const USERNAME = "olivia";
// The refresh retry grace of the provider (REFRESH_RETRY_GRACE).
const GRACE_MS = 10 * 1000;
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
const advance = (ms) => control("POST", `/clock/advance?ms=${ms}`);
const addUser = (username, password = PASSWORD) => control("POST", "/users", { username, password });
const sessionsOf = (username) => control("GET", `/sessions?username=${username}`);

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
const newContext = () => browser.newContext({ ignoreHTTPSErrors: true });
async function newPage(context) {
  const page = await context.newPage();
  // Nothing here waits for the clock: a navigation that does not arrive failed.
  page.setDefaultTimeout(15_000);
  page.on("console", (m) => {
    if (/Content Security Policy/.test(m.text())) console.log(`  [console] ${m.text()}`);
  });
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** The payload of a JWT, unverified (openid-client verified what it must). */
const payloadOf = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[1], "base64url").toString());
const headerOf = (jwt) => JSON.parse(Buffer.from(jwt.split(".")[0], "base64url").toString());

/** Runs `call`, expecting an OAuth error response `error` from the server. */
async function oauthError(call, error) {
  const failure = await call().then(
    (value) => assert.fail(`expected ${error}, got ${JSON.stringify(value)}`),
    (e) => e,
  );
  assert.ok(failure instanceof oidc.ResponseBodyError, `${failure.stack || failure}`);
  assert.equal(failure.error, error, failure.error_description);
  return failure;
}

const issuer = new URL(BASE);
const confidential = await oidc.discovery(
  issuer,
  CLIENTS.confidential.client_id,
  undefined,
  oidc.ClientSecretBasic(CLIENTS.confidential.client_secret),
);
const publicClient = await oidc.discovery(issuer, CLIENTS.public.client_id, undefined, oidc.None());
const thirdParty = await oidc.discovery(
  issuer,
  CLIENTS.third_party.client_id,
  undefined,
  oidc.ClientSecretBasic(CLIENTS.third_party.client_secret),
);

/** A fresh authorization request: the URL and the checks to exchange its answer with. */
async function authorization(config, extra = {}, scope = "openid profile offline_access") {
  const pkceCodeVerifier = oidc.randomPKCECodeVerifier();
  const expectedState = oidc.randomState();
  const expectedNonce = oidc.randomNonce();
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT_URI,
    scope,
    code_challenge: await oidc.calculatePKCECodeChallenge(pkceCodeVerifier),
    code_challenge_method: "S256",
    state: expectedState,
    nonce: expectedNonce,
    ...extra,
  });
  return { url, checks: { pkceCodeVerifier, expectedState, expectedNonce, idTokenExpected: true } };
}

/** Follows `url` in `page` until the browser is back at the client; the URLs it went through. */
async function navigateToCallback(page, url, during = async () => {}) {
  const visited = [];
  const listener = (frame) => {
    if (frame === page.mainFrame()) visited.push(frame.url());
  };
  page.on("framenavigated", listener);
  await page.goto(url.href);
  await during();
  await page.waitForURL((u) => u.href.startsWith(REDIRECT_URI));
  page.off("framenavigated", listener);
  await page.getByRole("heading", { name: "Back at the client" }).waitFor();
  const callback = new URL(page.url());
  assert.equal(callback.searchParams.get("iss"), BASE, "RFC 9207 iss in the response");
  assert.ok(callback.searchParams.get("state"), "state returned");
  return { callback, visited };
}

/** Signs in on the sign-in page the authorization request led to, without "Stay signed in". */
async function signInHere(page, { screenshots = false } = {}) {
  await page.waitForURL(/\/login\?return_to=/);
  await page.locator("#username").waitFor();
  if (screenshots) await shot(page, "01-sign-in-for-client");
  await page.fill("#username", USERNAME);
  await page.fill("#password", PASSWORD);
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/login\/stay$/);
  if (screenshots) await shot(page, "02-stay-signed-in");
  await page.click("#stay-no");
}

/** Allows `client` the `scopes` on the consent page (asked for offline_access, or of a client
 * that needs consent). */
async function allowHere(page, client, scopes, screenshot = null) {
  await page.getByRole("heading", { name: `Allow ${client} to sign you in?` }).waitFor();
  assert.deepEqual(await page.locator("#consent-scopes li").allInnerTexts(), scopes);
  if (screenshot) await shot(page, screenshot);
  await page.click("#consent-allow");
}

const scenarios = [];
const scenario = (name, run) => scenarios.push({ name, run });
const shared = {}; // what a scenario leaves for the next: the SSO browser, tokens

scenario("1_confidential_client_secret_basic_sign_in_code_id_token_userinfo", async () => {
  await addUser(USERNAME);
  const metadata = confidential.serverMetadata();
  assert.equal(metadata.issuer, BASE);
  assert.equal(metadata.authorization_endpoint, `${BASE}/oidc/authorize`);
  assert.ok(metadata.code_challenge_methods_supported.includes("S256"));
  assert.equal(metadata.authorization_response_iss_parameter_supported, true);

  const context = await newContext();
  shared.context = context;
  const page = await newPage(context);
  const { url, checks } = await authorization(confidential);
  const { callback } = await navigateToCallback(page, url, async () => {
    await signInHere(page, { screenshots: true });
    // offline_access is always asked for (OpenID Connect Core §11), even of a first-party client.
    await allowHere(page, "Notes", ["openid", "profile", "offline_access"], "03-consent-offline-access");
  });
  assert.ok(callback.searchParams.get("code"), "code returned");
  assert.equal(callback.searchParams.get("state"), checks.expectedState);
  await shot(page, "04-back-at-the-client");

  // openid-client checks the ID token: signature (JWKS), iss, aud, exp, iat, nonce, at_hash.
  const tokens = await oidc.authorizationCodeGrant(confidential, callback, checks);
  const claims = tokens.claims();
  assert.equal(headerOf(tokens.id_token).alg, "ES256", "the provider's first algorithm");
  assert.equal(claims.iss, BASE);
  assert.equal(claims.aud, CLIENTS.confidential.client_id);
  assert.equal(claims.nonce, checks.expectedNonce);
  assert.match(claims.sid, /\S/, "sid present");
  assert.equal(typeof claims.auth_time, "number", "auth_time present");
  assert.ok(Math.abs(claims.auth_time - Date.now() / 1000) < 60, `auth_time ${claims.auth_time} is now`);
  assert.ok(tokens.refresh_token, "offline_access gives a refresh token");
  assert.equal(tokens.token_type.toLowerCase(), "bearer");

  const info = await oidc.fetchUserInfo(confidential, tokens.access_token, claims.sub);
  assert.equal(info.sub, claims.sub);
  assert.equal(info.preferred_username, USERNAME);
  shared.sub = claims.sub;
  shared.sid = claims.sid;
  shared.confidentialTokens = tokens;

  const { live } = await sessionsOf(USERNAME);
  const client = live.find((s) => s.application === CLIENTS.confidential.client_id);
  assert.ok(client, `a session of the client: ${JSON.stringify(live)}`);
  // An offline grant is no child of the SSO session: it outlives the sign-out (Core §11).
  assert.equal(client.parent, null, `an offline grant stands alone: ${JSON.stringify(client)}`);
});

scenario("2_public_client_pkce_in_the_same_browser_is_single_sign_on", async () => {
  const page = await newPage(shared.context);
  // A first-party client without offline_access: nothing to sign in to, nothing to allow.
  const { url, checks } = await authorization(publicClient, {}, "openid profile");
  const { callback, visited } = await navigateToCallback(page, url);
  assert.ok(
    visited.every((u) => u.startsWith(`${BASE}/oidc/authorize?`) || u.startsWith(REDIRECT_URI)),
    `no sign-in or consent page on the way: ${visited.join(" → ")}`,
  );
  assert.ok(callback.searchParams.get("code"));
  const tokens = await oidc.authorizationCodeGrant(publicClient, callback, checks);
  const claims = tokens.claims();
  // This client registered id_token_signed_response_alg RS256; openid-client verified it.
  assert.equal(headerOf(tokens.id_token).alg, "RS256");
  assert.equal(claims.aud, CLIENTS.public.client_id);
  assert.equal(claims.sub, shared.sub, "the same person");
  assert.equal(claims.sid, shared.sid, "the same SSO session");
  const info = await oidc.fetchUserInfo(publicClient, tokens.access_token, claims.sub);
  assert.equal(info.preferred_username, USERNAME);
  await page.close();
});

scenario("3_refresh_rotation_retry_grace_and_reuse_ends_the_family", async () => {
  const client = confidential;
  const first = shared.confidentialTokens.refresh_token;
  const family = payloadOf(shared.confidentialTokens.access_token).ses;
  assert.ok(family, "the access token names the client's session");

  const rotated = await oidc.refreshTokenGrant(client, first);
  const second = rotated.refresh_token;
  assert.ok(second && second !== first, "rotation gives a new refresh token");
  const info = await oidc.fetchUserInfo(client, rotated.access_token, shared.sub);
  assert.equal(info.preferred_username, USERNAME);

  // A client that lost the answer retries at once: the same successor, not a new one.
  const retried = await oidc.refreshTokenGrant(client, first);
  assert.equal(retried.refresh_token, second, "within the grace the same refresh token comes back");

  await advance(GRACE_MS + 1000);
  await oauthError(() => oidc.refreshTokenGrant(client, first), "invalid_grant");
  await oauthError(() => oidc.refreshTokenGrant(client, second), "invalid_grant");

  const { live, ended } = await sessionsOf(USERNAME);
  assert.ok(
    ended.some((e) => e.session === family && e.reason === "token_reuse"),
    `the client's session ended for token_reuse: ${JSON.stringify(ended)}`,
  );
  assert.ok(!live.some((s) => s.id === family), "no longer live");
  assert.ok(live.some((s) => s.id === shared.sid), "the SSO session goes on");
});

scenario("4_consent_then_introspection_and_revocation", async () => {
  const page = await newPage(shared.context);
  const { url, checks } = await authorization(thirdParty);
  const { callback } = await navigateToCallback(page, url, async () => {
    // A client registered to need consent (a third party), and SSO: no sign-in, just this.
    await allowHere(page, "Photo Printer", ["openid", "profile", "offline_access"], "05-consent-third-party");
  });
  const tokens = await oidc.authorizationCodeGrant(thirdParty, callback, checks);

  const active = await oidc.tokenIntrospection(thirdParty, tokens.access_token);
  assert.equal(active.active, true, JSON.stringify(active));
  assert.equal(active.client_id, CLIENTS.third_party.client_id);
  assert.equal(active.sub, shared.sub);
  assert.match(active.scope, /\bopenid\b/);
  const refresh = await oidc.tokenIntrospection(thirdParty, tokens.refresh_token);
  assert.equal(refresh.active, true, JSON.stringify(refresh));
  assert.equal(refresh.token_type, "refresh_token");
  // Another client learns nothing of it.
  assert.equal((await oidc.tokenIntrospection(confidential, tokens.access_token)).active, false);

  await oidc.tokenRevocation(thirdParty, tokens.refresh_token, { token_type_hint: "refresh_token" });
  const after = await oidc.tokenIntrospection(thirdParty, tokens.access_token);
  assert.equal(after.active, false, `the access token follows the revoked session: ${JSON.stringify(after)}`);
  assert.equal((await oidc.tokenIntrospection(thirdParty, tokens.refresh_token)).active, false);
  await oauthError(() => oidc.refreshTokenGrant(thirdParty, tokens.refresh_token), "invalid_grant");

  // Consent is remembered: the next authorization goes straight back.
  const again = await authorization(thirdParty);
  const { visited } = await navigateToCallback(page, again.url);
  assert.ok(visited.every((u) => !u.includes("/login")), visited.join(" → "));
  await page.close();
});

scenario("4b_consent_answers_only_the_request_shown_and_prompt_consent_ends", async () => {
  // Two authorizations in one browser: the second replaces the pending one, and an "Allow"
  // on the first page must not grant the second client.
  const first = await newPage(shared.context);
  const second = await newPage(shared.context);
  const printer = await authorization(thirdParty, { prompt: "consent" });
  await first.goto(printer.url.href);
  await first.getByRole("heading", { name: "Allow Photo Printer to sign you in?" }).waitFor();
  const notes = await authorization(confidential, { prompt: "consent" });
  await second.goto(notes.url.href);
  await second.getByRole("heading", { name: "Allow Notes to sign you in?" }).waitFor();
  const stale = first.waitForResponse((r) => r.url().endsWith("/oidc/consent"));
  await first.click("#consent-allow");
  assert.equal((await stale).status(), 403, "the first page's answer is refused");
  await first.getByText("This form has expired").first().waitFor();
  assert.ok(!first.url().startsWith(REDIRECT_URI), first.url());
  // The page shown for the pending request answers it, once: prompt=consent is satisfied.
  await second.click("#consent-allow");
  await second.waitForURL((u) => u.href.startsWith(REDIRECT_URI));
  const callback = new URL(second.url());
  assert.equal(callback.searchParams.get("state"), notes.checks.expectedState);
  const tokens = await oidc.authorizationCodeGrant(confidential, callback, notes.checks);
  assert.equal(tokens.claims().aud, CLIENTS.confidential.client_id);
  await first.close();
  await second.close();
});

scenario("5_prompt_none_without_a_sign_in_is_login_required", async () => {
  const context = await newContext();
  const page = await newPage(context);
  const { url, checks } = await authorization(confidential, { prompt: "none" });
  const { callback, visited } = await navigateToCallback(page, url);
  assert.ok(!visited.some((u) => u.includes("/login")), visited.join(" → "));
  assert.equal(callback.searchParams.get("error"), "login_required");
  assert.equal(callback.searchParams.get("state"), checks.expectedState);
  assert.equal(callback.searchParams.get("code"), null);
  // openid-client reads it as the authorization error it is.
  const failure = await oidc.authorizationCodeGrant(confidential, callback, checks).then(
    () => assert.fail("no code, no tokens"),
    (e) => e,
  );
  assert.ok(failure instanceof oidc.AuthorizationResponseError, `${failure.stack || failure}`);
  assert.equal(failure.error, "login_required");
  await context.close();
});

scenario("6_a_wrong_pkce_verifier_is_invalid_grant", async () => {
  // A fresh browser: sign in, and from "Stay signed in?" straight back to the client (no
  // consent to ask for), the redirect that follows the sign-in form.
  const context = await newContext();
  const page = await newPage(context);
  const { url, checks } = await authorization(publicClient, {}, "openid profile");
  let stayPolicy = null;
  const { callback } = await navigateToCallback(page, url, async () => {
    const stayPage = page.waitForResponse((r) => r.url().endsWith("/login/stay") && r.request().method() === "GET");
    await signInHere(page);
    stayPolicy = (await (await stayPage).allHeaders())["content-security-policy"];
  });
  // The form on the way may lead to the client, and only while the authorization is pending.
  const clientOrigin = new URL(REDIRECT_URI).origin;
  assert.ok(stayPolicy.includes(`form-action 'self' ${clientOrigin};`), stayPolicy);
  const later = await page.goto(`${BASE}/account`);
  assert.match((await later.allHeaders())["content-security-policy"], /form-action 'self';/);
  await oauthError(
    () => oidc.authorizationCodeGrant(publicClient, callback, {
      ...checks,
      pkceCodeVerifier: oidc.randomPKCECodeVerifier(),
    }),
    "invalid_grant",
  );
  // The code was spent by that attempt: the right verifier is too late now.
  await oauthError(() => oidc.authorizationCodeGrant(publicClient, callback, checks), "invalid_grant");
  await context.close();
});

scenario("7_rp_initiated_logout_ends_the_sso_session_and_every_client_session_under_it", async () => {
  const page = await newPage(shared.context);
  const signedOut = new URL("/signed-out", REDIRECT_URI).href;
  const idTokenHint = shared.confidentialTokens.id_token;
  // A return address the client did not register: refused on a page, no redirect (OIDC-RPL-9).
  const foreign = oidc.buildEndSessionUrl(confidential, {
    id_token_hint: idTokenHint,
    post_logout_redirect_uri: "https://elsewhere.example/bye",
  });
  const refused = await page.goto(foreign.href);
  assert.equal(refused.status(), 400);
  await page.getByRole("heading", { name: "This sign-out link does not work" }).waitFor();
  assert.ok(page.url().startsWith(BASE), page.url());
  assert.ok((await sessionsOf(USERNAME)).live.some((s) => s.id === shared.sid), "still signed in");

  // Our ID token names this browser's SSO session: signed out at once, back with state.
  const before = (await sessionsOf(USERNAME)).live.filter((s) => s.parent === shared.sid);
  assert.ok(before.length > 0, "client sessions under the SSO session");
  const url = oidc.buildEndSessionUrl(confidential, {
    id_token_hint: idTokenHint,
    post_logout_redirect_uri: signedOut,
    state: "bye-1",
  });
  await page.goto(url.href);
  // On the way: the signed-out page frames the front-channel logout page of every client the
  // person used under this SSO session, then goes on to the client.
  await page.locator("iframe.front-channel-logout").first().waitFor({ state: "attached" });
  await shot(page, "07-front-channel-logout");
  await page.getByRole("heading", { name: "Signed out at the client" }).waitFor();
  const back = new URL(page.url());
  assert.equal(back.origin + back.pathname, signedOut);
  assert.equal(back.searchParams.get("state"), "bye-1", "state returned unchanged (OIDC-RPL-8)");
  await shot(page, "07-signed-out-at-the-client");

  const { live, ended } = await sessionsOf(USERNAME);
  assert.ok(!live.some((s) => s.id === shared.sid), "the SSO session ended");
  assert.ok(ended.some((e) => e.session === shared.sid && e.reason === "logout"), JSON.stringify(ended));
  for (const child of before) {
    assert.ok(!live.some((s) => s.id === child.id), `client session ${child.id} ended too`);
    assert.ok(
      ended.some((e) => e.session === child.id && e.reason === "parent_ended"),
      `${child.id} ended parent_ended: ${JSON.stringify(ended)}`,
    );
  }
  // OpenID Connect Front-Channel Logout: each loaded with iss and sid (OIDC-FCL-2), only for
  // clients with a session under the SSO session (OIDC-FCL-5).
  const hits = await control("GET", "/frontchannel/hits");
  const clientsWithSessions = new Set(before.map((s) => s.application));
  const expected = Object.values(CLIENTS)
    .filter((c) => c && c.client_id && clientsWithSessions.has(c.client_id))
    .length;
  assert.ok(expected > 0, "a client with a front-channel logout page had a session");
  assert.equal(hits.length, expected, JSON.stringify({ hits, before }));
  for (const hit of hits) {
    assert.equal(hit.iss, BASE);
    assert.equal(hit.sid, shared.sid);
  }
  // Signing in is needed again.
  const { url: silent } = await authorization(confidential, { prompt: "none" });
  const { callback } = await navigateToCallback(page, silent);
  assert.equal(callback.searchParams.get("error"), "login_required");
  await page.close();
});

/** The application's page (another site) with a form that posts `fields` to `action`. */
function postingForm(action, fields, button) {
  const inputs = Object.entries(fields)
    .map(([name, value]) => `<input type="hidden" name="${name}" value="${value}">`)
    .join("");
  return `<form method="post" action="${action}">${inputs}<button id="${button}">Go</button></form>`;
}

scenario("8_authorization_and_rp_initiated_logout_by_cross_site_posts", async () => {
  // OIDC Core 3.1.2.1 and OIDC-RPL-2: both endpoints take the application's form POST too.
  const context = await newContext();
  const page = await newPage(context);
  const { url, checks } = await authorization(confidential, {}, "openid profile");
  const { callback } = await navigateToCallback(page, url, async () => signInHere(page));
  const tokens = await oidc.authorizationCodeGrant(confidential, callback, checks);
  const sid = tokens.claims().sid;
  assert.ok((await sessionsOf(USERNAME)).live.some((s) => s.id === sid));
  // The posted authorization request is answered by the SSO session: no sign-in on the way.
  const posted = await authorization(confidential, {}, "openid profile");
  await page.goto(new URL("/callback", REDIRECT_URI).href);
  await page.setContent(postingForm(`${BASE}/oidc/authorize`, Object.fromEntries(posted.url.searchParams), "in"));
  await page.click("#in");
  await page.waitForURL((u) => u.href.startsWith(REDIRECT_URI) && u.searchParams.has("code"));
  const postedTokens = await oidc.authorizationCodeGrant(confidential, new URL(page.url()), posted.checks);
  assert.equal(postedTokens.claims().sid, sid, "the same SSO session, no password asked");
  const fields = {
    id_token_hint: tokens.id_token,
    post_logout_redirect_uri: new URL("/signed-out", REDIRECT_URI).href,
    state: "posted-1",
  };
  // The application's page (another site) posts the form.
  await page.goto(new URL("/callback", REDIRECT_URI).href);
  await page.setContent(postingForm(`${BASE}/oidc/logout`, fields, "out"));
  await page.click("#out");
  await page.getByRole("heading", { name: "Signed out at the client" }).waitFor();
  assert.equal(new URL(page.url()).searchParams.get("state"), "posted-1");
  const { live, ended } = await sessionsOf(USERNAME);
  assert.ok(!live.some((s) => s.id === sid), "the SSO session ended");
  assert.ok(ended.some((e) => e.session === sid && e.reason === "logout"), JSON.stringify(ended));
  await context.close();
});

let failed = 0;
const only = process.env.ONLY;
for (const { name, run } of scenarios.filter((s) => !only || s.name.includes(only))) {
  const started = Date.now();
  try {
    await run();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    failed += 1;
    console.log(`FAIL ${name}: ${error.stack || error}`);
    if (error.cause) console.log(`  cause: ${JSON.stringify(error.cause)}`);
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        const main = await page.locator("main").innerText({ timeout: 1000 }).catch(() => "(no main)");
        console.log(`  page ${page.url()}: ${main.replace(/\s+/g, " ").slice(0, 300)}`);
        await shot(page, `failed-${name}`).catch(() => {});
      }
    }
  }
}
await browser.close();
if (failed) {
  console.log(`${failed} of ${scenarios.length} OpenID Connect scenarios failed`);
  process.exit(1);
}
console.log(`all OpenID Connect scenarios passed (${scenarios.length})`);
