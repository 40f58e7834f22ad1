// An application that signs people in with Portcullis, as an application developer would write
// it on Node: the built-in http module, openid-client as a confidential client
// (client_secret_basic), and jose for the logout tokens of Back-Channel Logout. It keeps its own
// sessions (a random cookie → who signed in, under which provider session, with which ID token),
// signs out at the provider too (RP-initiated logout) and ends its sessions when the provider
// says so.
//
// Configuration, from the environment (see README.md): ISSUER, CLIENT_ID, CLIENT_SECRET,
// LISTEN (default 127.0.0.1:3002; port 0 picks one), BASE_URL (default http:// and the address
// listened on), APP_NAME, COOKIE_PREFIX (default rp-node). The first line on standard output is
// `listening on <address>`, once the provider's discovery document is read.
import { createServer } from "node:http";
import { createHash, randomBytes } from "node:crypto";
import * as oidc from "openid-client";
import * as jose from "jose";

const SIGN_IN_LIFETIME_MS = 10 * 60 * 1000;
const SESSION_LIFETIME_MS = 8 * 3600 * 1000;
const SIGN_OUT_LIFETIME_MS = 10 * 60 * 1000;
const BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout";
const MAX_BODY = 64 * 1024;

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`rp-node: set ${name} (see README.md)`);
    process.exit(1);
  }
  return value;
}

const ISSUER = required("ISSUER");
const CLIENT_ID = required("CLIENT_ID");
const CLIENT_SECRET = required("CLIENT_SECRET");
const LISTEN = process.env.LISTEN || "127.0.0.1:3002";
const APP_NAME = process.env.APP_NAME || "Example application (Node)";
const COOKIE_PREFIX = process.env.COOKIE_PREFIX || "rp-node";

// ---------------------------------------------------------------------------------------------
// The provider.

const issuerUrl = new URL(ISSUER);
// openid-client speaks only https, except to a provider on this machine during development.
const loopback = ["127.0.0.1", "[::1]", "localhost"].includes(issuerUrl.hostname);
const insecure = issuerUrl.protocol === "http:" && loopback;
let config;
try {
  config = await oidc.discovery(
    issuerUrl,
    CLIENT_ID,
    undefined,
    oidc.ClientSecretBasic(CLIENT_SECRET),
    insecure ? { execute: [oidc.allowInsecureRequests] } : undefined,
  );
} catch (error) {
  console.error(`rp-node: discovery at ${ISSUER}: ${error.message}${error.cause ? `: ${error.cause.message}` : ""}`);
  process.exit(1);
}
const metadata = config.serverMetadata();

// The provider's keys for logout tokens: fetched when first needed, again when a token names a
// key id the set does not hold (at most every 30 seconds).
const providerKeys = jose.createRemoteJWKSet(new URL(metadata.jwks_uri));
// The algorithms the provider signs ID tokens with; never "none" or a symmetric one.
const logoutTokenAlgorithms = (metadata.id_token_signing_alg_values_supported || ["RS256"]).filter(
  (alg) => alg !== "none" && !alg.startsWith("HS"),
);

// ---------------------------------------------------------------------------------------------
// What the application keeps about browsers, each entry bound to a random cookie and kept under
// the SHA-256 of that cookie.

class CookieStore {
  #entries = new Map();
  constructor(lifetimeMs) {
    this.lifetimeMs = lifetimeMs;
  }
  static #key(cookie) {
    return createHash("sha256").update(cookie).digest("base64url");
  }
  #live(entry) {
    return entry && Date.now() - entry.created < this.lifetimeMs ? entry.value : undefined;
  }
  /** Keeps `value`; returns the new cookie value (256 random bits) that reaches it. */
  insert(value) {
    for (const [key, entry] of this.#entries) {
      if (!this.#live(entry)) this.#entries.delete(key);
    }
    const cookie = randomBytes(32).toString("base64url");
    this.#entries.set(CookieStore.#key(cookie), { created: Date.now(), value });
    return cookie;
  }
  get(cookie) {
    return cookie ? this.#live(this.#entries.get(CookieStore.#key(cookie))) : undefined;
  }
  /** Removes and returns the value `cookie` reaches (a value used once). */
  take(cookie) {
    if (!cookie) return undefined;
    const key = CookieStore.#key(cookie);
    const value = this.#live(this.#entries.get(key));
    this.#entries.delete(key);
    return value;
  }
  /** Removes every value `matches` picks; returns how many there were. */
  removeWhere(matches) {
    let removed = 0;
    for (const [key, entry] of this.#entries) {
      if (matches(entry.value)) {
        this.#entries.delete(key);
        removed += 1;
      }
    }
    return removed;
  }
}

const logins = new CookieStore(SIGN_IN_LIFETIME_MS); // state, nonce, PKCE verifier
const sessions = new CookieStore(SESSION_LIFETIME_MS); // { sub, sid, name, idToken }
const logouts = new CookieStore(SIGN_OUT_LIFETIME_MS); // the state of a sign-out at the provider

// ---------------------------------------------------------------------------------------------
// Cookies. Browsers do not keep cookies apart by port, so two applications on one host need
// different names (COOKIE_PREFIX); over https they are __Host- cookies.

let secure = false;
const cookieNames = () => {
  const host = secure ? "__Host-" : "";
  return {
    session: `${host}${COOKIE_PREFIX}-session`,
    login: `${host}${COOKIE_PREFIX}-login`,
    logout: `${host}${COOKIE_PREFIX}-logout`,
  };
};

function setCookie(name, value, maxAgeMs) {
  let cookie = `${name}=${value}; Path=/; HttpOnly; SameSite=Lax`;
  if (secure) cookie += "; Secure";
  if (maxAgeMs !== undefined) cookie += `; Max-Age=${Math.floor(maxAgeMs / 1000)}`;
  return cookie;
}
const clearCookie = (name) => setCookie(name, "", 0);

function readCookie(request, name) {
  for (const pair of (request.headers.cookie || "").split(";")) {
    const at = pair.indexOf("=");
    if (at > 0 && pair.slice(0, at).trim() === name) return pair.slice(at + 1).trim() || undefined;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Answers.

const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function page(response, status, body, cookies = []) {
  const title = escape(APP_NAME);
  response.writeHead(status, {
    "content-type": "text/html; charset=utf-8",
    "cache-control": "no-store",
    "set-cookie": cookies,
  });
  response.end(
    `<!doctype html><html lang="en"><head><meta charset="utf-8">` +
      `<meta name="viewport" content="width=device-width, initial-scale=1"><title>${title}</title>` +
      `<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}` +
      `code{background:#f2f2f2;padding:0 .2rem}</style></head>` +
      `<body><header><p><strong>${title}</strong></p></header><main>${body}</main></body></html>`,
  );
}

const errorPage = (response, status, message, cookies = []) =>
  page(
    response,
    status,
    `<h1>Something went wrong</h1><p id="problem">${escape(message)}</p><p><a href="/">Home</a></p>`,
    cookies,
  );

function redirect(response, location, cookies = []) {
  response.writeHead(303, { location, "set-cookie": cookies, "cache-control": "no-store" });
  response.end();
}

function json(response, status, body) {
  response.writeHead(status, { "content-type": "application/json", "cache-control": "no-store" });
  response.end(JSON.stringify(body));
}

const describe = (error) => (error.cause?.message ? `${error.message}: ${error.cause.message}` : error.message);

// ---------------------------------------------------------------------------------------------
// Routes.

/** GET /: who is signed in here, or a link to sign in. */
function home(request, response) {
  const session = sessions.get(readCookie(request, cookieNames().session));
  if (session) {
    page(
      response,
      200,
      `<h1>Signed in</h1><p>Signed in as <strong id="who">${escape(session.name)}</strong> ` +
        `(subject <code id="sub">${escape(session.sub)}</code>, ` +
        `provider session <code id="sid">${escape(session.sid ?? "none")}</code>).</p>` +
        `<p><a id="sign-out" href="/logout">Sign out</a> · ` +
        `<a id="sign-out-everywhere" href="/logout?everywhere=1">Sign out everywhere</a></p>`,
    );
  } else {
    page(
      response,
      200,
      `<h1>Not signed in</h1><p><a id="sign-in" href="/login">Sign in</a> with your Portcullis account.</p>`,
    );
  }
}

/** GET /login: off to the provider with PKCE (S256), state and nonce kept here under a new
 * cookie. ?prompt=none asks whether the person is signed in there, showing them nothing. */
async function login(request, response, url, base) {
  const prompt = url.searchParams.get("prompt");
  if (prompt !== null && prompt !== "none" && prompt !== "login") {
    return errorPage(response, 400, "prompt is none or login");
  }
  const pkceCodeVerifier = oidc.randomPKCECodeVerifier();
  const expectedState = oidc.randomState();
  const expectedNonce = oidc.randomNonce();
  const parameters = {
    redirect_uri: `${base}/callback`,
    scope: "openid profile",
    code_challenge: await oidc.calculatePKCECodeChallenge(pkceCodeVerifier),
    code_challenge_method: "S256",
    state: expectedState,
    nonce: expectedNonce,
  };
  if (prompt) parameters.prompt = prompt;
  const cookie = logins.insert({ pkceCodeVerifier, expectedState, expectedNonce, silent: prompt === "none" });
  const names = cookieNames();
  redirect(response, oidc.buildAuthorizationUrl(config, parameters).href, [
    setCookie(names.login, cookie, SIGN_IN_LIFETIME_MS),
  ]);
}

/** GET /callback: the provider's answer. openid-client checks state and iss (RFC 9207), then
 * exchanges the code and verifies the ID token (signature, iss, aud, exp, iat, nonce); a new
 * session of the application begins. */
async function callback(request, response, url) {
  const names = cookieNames();
  const clear = clearCookie(names.login);
  const pending = logins.take(readCookie(request, names.login));
  if (!pending) {
    return errorPage(response, 400, "No sign-in is in progress in this browser (or it took too long). Sign in again.", [clear]);
  }
  let tokens;
  try {
    tokens = await oidc.authorizationCodeGrant(config, url, {
      pkceCodeVerifier: pending.pkceCodeVerifier,
      expectedState: pending.expectedState,
      expectedNonce: pending.expectedNonce,
      idTokenExpected: true,
    });
  } catch (error) {
    if (error instanceof oidc.AuthorizationResponseError) {
      const what = pending.silent ? "The provider did not sign you in silently" : "The provider did not sign you in";
      return page(
        response,
        403,
        `<h1>Not signed in</h1><p>${what}: <code id="error">${escape(error.error)}</code>` +
          `${error.error_description ? ` — ${escape(error.error_description)}` : ""}</p><p><a id="sign-in" href="/login">Sign in</a></p>`,
        [clear],
      );
    }
    console.error(`rp-node: sign-in failed: ${describe(error)}`);
    return errorPage(response, 400, `Sign-in failed: ${describe(error)}`, [clear]);
  }
  const claims = tokens.claims();
  let info;
  try {
    info = await oidc.fetchUserInfo(config, tokens.access_token, claims.sub);
  } catch (error) {
    console.error(`rp-node: userinfo failed: ${describe(error)}`);
    return errorPage(response, 502, `Userinfo failed: ${describe(error)}`, [clear]);
  }
  // A sign-in always begins a new session: one this browser held before ends.
  sessions.take(readCookie(request, names.session));
  const session = {
    sub: claims.sub,
    sid: typeof claims.sid === "string" ? claims.sid : undefined,
    name: info.preferred_username || info.name || claims.sub,
    idToken: tokens.id_token,
  };
  console.error(`rp-node: signed in ${session.sub} (sid ${session.sid ?? "none"})`);
  redirect(response, "/", [setCookie(names.session, sessions.insert(session)), clear]);
}

/** GET /logout: ends the application's session, then sends the browser to the provider to sign
 * out there too, with the ID token as id_token_hint and a state kept under a cookie. With
 * `?everywhere=1`, asks Portcullis to end the session at its upstream provider as well
 * (`federated`, for people who signed in through their organisation's identity provider). */
function logout(request, response, url, base) {
  const names = cookieNames();
  const clear = clearCookie(names.session);
  const session = sessions.take(readCookie(request, names.session));
  if (!session) return redirect(response, "/", [clear]);
  console.error(`rp-node: signed out ${session.sub}`);
  if (!metadata.end_session_endpoint) return redirect(response, "/signed-out", [clear]);
  const state = oidc.randomState();
  const cookie = logouts.insert(state);
  const endSession = oidc.buildEndSessionUrl(config, {
    id_token_hint: session.idToken,
    post_logout_redirect_uri: `${base}/signed-out`,
    state,
    ...(url.searchParams.has("everywhere") ? { federated: "" } : {}),
  });
  redirect(response, endSession.href, [clear, setCookie(names.logout, cookie, SIGN_OUT_LIFETIME_MS)]);
}

/** GET /signed-out: back from the provider; the state this browser's sign-out sent says it went
 * through the provider. */
function signedOut(request, response, url) {
  const names = cookieNames();
  const expected = logouts.take(readCookie(request, names.logout));
  const atProvider = expected !== undefined && expected === url.searchParams.get("state");
  const where = atProvider ? "of this application and of Portcullis" : "of this application";
  page(
    response,
    200,
    `<h1>Signed out</h1><p id="signed-out">You are signed out ${where}.</p>` +
      `<p><a id="sign-in" href="/login">Sign in again</a></p>`,
    [clearCookie(names.logout)],
  );
}

class LogoutTokenError extends Error {}

/** Verifies a logout token (Back-Channel Logout 1.0 §2.6) and says whose sessions it ends. */
async function verifyLogoutToken(token) {
  const { payload, protectedHeader } = await jose.jwtVerify(token, providerKeys, {
    issuer: metadata.issuer,
    audience: CLIENT_ID,
    algorithms: logoutTokenAlgorithms,
    requiredClaims: ["iat", "exp", "jti"],
    clockTolerance: 60,
  });
  const typ = protectedHeader.typ?.toLowerCase();
  if (typ !== undefined && typ !== "logout+jwt" && typ !== "application/logout+jwt") {
    throw new LogoutTokenError(`typ ${protectedHeader.typ} is not logout+jwt`);
  }
  const event = payload.events?.[BACKCHANNEL_LOGOUT_EVENT];
  if (typeof event !== "object" || event === null || Array.isArray(event)) {
    throw new LogoutTokenError(`events has no ${BACKCHANNEL_LOGOUT_EVENT} object`);
  }
  if ("nonce" in payload) throw new LogoutTokenError("a logout token must not contain a nonce");
  const sub = typeof payload.sub === "string" ? payload.sub : undefined;
  const sid = typeof payload.sid === "string" ? payload.sid : undefined;
  if (sub === undefined && sid === undefined) throw new LogoutTokenError("a logout token names sub, sid or both");
  return { sub, sid };
}

/** Whether a local session is one a logout token naming { sub, sid } ends. */
const covers = (target, session) =>
  target.sid !== undefined
    ? session.sid === target.sid && (target.sub === undefined || session.sub === target.sub)
    : session.sub === target.sub;

/** The body of a request, at most MAX_BODY bytes (undefined when larger). */
async function readBody(request) {
  const chunks = [];
  let size = 0;
  for await (const chunk of request) {
    size += chunk.length;
    if (size > MAX_BODY) return undefined;
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** POST /backchannel-logout: the provider says a session there ended. 200 once every session
 * here under that provider session (sid), or of that person (sub), has ended; 400 with an OAuth
 * error body when the request or token is not acceptable; 503 when the provider's keys cannot
 * be fetched (a later delivery may succeed). */
async function backchannelLogout(request, response) {
  const refuse = (why) => json(response, 400, { error: "invalid_request", error_description: why });
  const type = (request.headers["content-type"] || "").split(";")[0].trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") {
    return refuse("the body must be application/x-www-form-urlencoded");
  }
  const body = await readBody(request);
  if (body === undefined) return refuse("the body is too large");
  const tokens = new URLSearchParams(body).getAll("logout_token");
  if (tokens.length !== 1) return refuse("exactly one logout_token is required");
  let target;
  try {
    target = await verifyLogoutToken(tokens[0]);
  } catch (error) {
    const keysUnavailable =
      error instanceof jose.errors.JWKSTimeout ||
      (!(error instanceof jose.errors.JOSEError) && !(error instanceof LogoutTokenError)) ||
      error.code === "ERR_JOSE_GENERIC";
    if (keysUnavailable) {
      console.error(`rp-node: back-channel logout: the provider's keys: ${describe(error)}`);
      return json(response, 503, {
        error: "temporarily_unavailable",
        error_description: "the provider's keys cannot be fetched",
      });
    }
    console.error(`rp-node: back-channel logout refused: ${error.message}`);
    return refuse(error.message);
  }
  const ended = sessions.removeWhere((session) => covers(target, session));
  console.error(`rp-node: back-channel logout ${JSON.stringify(target)}: ${ended} session(s) ended`);
  response.writeHead(200, { "cache-control": "no-store" });
  response.end();
}

/** GET /session.json: whether the request's cookie reaches a live session here, and whose. */
function sessionJson(request, response) {
  const session = sessions.get(readCookie(request, cookieNames().session));
  json(
    response,
    200,
    session
      ? { signed_in: true, sub: session.sub, sid: session.sid ?? null, name: session.name }
      : { signed_in: false },
  );
}

// ---------------------------------------------------------------------------------------------
// The server.

const routes = {
  "GET /": home,
  "GET /login": login,
  "GET /callback": callback,
  "GET /logout": logout,
  "GET /signed-out": signedOut,
  "POST /backchannel-logout": backchannelLogout,
  "GET /session.json": sessionJson,
};

let base;
const server = createServer(async (request, response) => {
  try {
    const url = new URL(request.url, base);
    const route = routes[`${request.method} ${url.pathname}`];
    if (!route) return errorPage(response, 404, "There is nothing here.");
    await route(request, response, url, base);
  } catch (error) {
    console.error(`rp-node: ${request.method} ${request.url}: ${error.stack || error}`);
    if (!response.headersSent) errorPage(response, 500, "Something broke; it is in the log.");
    else response.end();
  }
});

const at = LISTEN.lastIndexOf(":");
const host = LISTEN.slice(0, at).replace(/^\[|\]$/g, "");
const port = Number(LISTEN.slice(at + 1));
server.listen(port, host, () => {
  const { address, port } = server.address();
  const listening = `http://${address.includes(":") ? `[${address}]` : address}:${port}`;
  base = (process.env.BASE_URL || listening).replace(/\/+$/, "");
  secure = base.startsWith("https://");
  console.log(`listening on ${listening}`);
  console.error(`rp-node: ${base} signs in with ${metadata.issuer}; back-channel logout URI ${base}/backchannel-logout`);
});
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => server.close(() => process.exit(0)));
