// Browser scenarios for Portcullis's pages. Started by crates/portcullis/tests/browser.rs, which
// serves Portcullis (HTTPS, self-signed, manual clock) and a control server that moves the
// server's clock. Each scenario is named after the STANDARDS.md checks it covers.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";

const BASE = process.env.PORTCULLIS_URL;
const CONTROL = process.env.CONTROL_URL;
const ARTIFACTS = process.env.ARTIFACTS;
const PROFILE_DIR = process.env.PROFILE_DIR;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage",
];
const PASSWORD = "correct horse battery";
const UA_LINUX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const UA_PHONE = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36";
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
const totpCode = async (secret) => (await control("GET", `/totp?secret=${secret}`)).code;

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
const newContext = (options = {}) =>
  browser.newContext({ ignoreHTTPSErrors: true, userAgent: UA_LINUX, ...options });

async function shot(page, name) {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function sessionCookie(context) {
  return (await context.cookies(BASE)).find((c) => c.name === "__Host-portcullis");
}

/** Signs in from the sign-in page; `stay` answers "Stay signed in?" (null: expect no question). */
async function signIn(page, username, { password = PASSWORD, stay = false, returnTo = "/account", code = null } = {}) {
  await page.goto(`${BASE}/login?return_to=${encodeURIComponent(returnTo)}`);
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("main button[type=submit]");
  if (code !== null) {
    await page.waitForURL(/\/login\/otp$/);
    await page.fill("#code", await code());
    await page.click("main button[type=submit]");
  }
  await page.waitForURL(/\/login\/stay$/);
  await page.click(stay ? "#stay-yes" : "#stay-no");
  await page.waitForURL(new RegExp(returnTo.replace(/[?]/g, "\\?") + "$"));
}

const scenarios = [];
const scenario = (name, run) => scenarios.push({ name, run });

scenario("asvs4_3_4_cookie_and_headers__sign_in_without_stay_signed_in", async () => {
  await addUser("alice");
  const context = await newContext();
  const page = await context.newPage();
  const first = await page.goto(`${BASE}/account`);
  assert.match(page.url(), /\/login\?return_to=\/account$/);
  const headers = first.headers();
  assert.match(headers["content-security-policy"], /frame-ancestors 'none'/);
  assert.doesNotMatch(headers["content-security-policy"], /unsafe-inline/);
  assert.equal(headers["x-frame-options"], "DENY");
  assert.equal(headers["referrer-policy"], "no-referrer");
  assert.match(headers["strict-transport-security"], /max-age=\d+/);
  await shot(page, "01-sign-in");
  await page.fill("#username", "alice");
  await page.fill("#password", PASSWORD);
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/login\/stay$/);
  await shot(page, "02-stay-signed-in");
  const response = page.waitForResponse((r) => r.url().endsWith("/login/stay"));
  await page.click("#stay-no");
  const setCookie = (await (await response).headerValue("set-cookie")) || "";
  assert.match(setCookie, /__Host-portcullis=pcs_[A-Za-z0-9_-]{43}; Path=\/; Secure; HttpOnly; SameSite=Lax/);
  assert.doesNotMatch(setCookie, /Domain=/i);
  await page.waitForURL(/\/account$/);
  const cookie = await sessionCookie(context);
  assert.ok(cookie, "session cookie set");
  assert.equal(cookie.expires, -1, "no Stay signed in: a browser-session cookie (OWASP-SM-8)");
  assert.ok(cookie.httpOnly && cookie.secure);
  assert.equal(cookie.sameSite, "Lax");
  await page.getByRole("heading", { name: "Your account" }).waitFor();
  await context.close();
});

scenario("nist4_5_stay_signed_in_survives_a_browser_restart__and_no_does_not", async () => {
  await addUser("stella");
  for (const stay of [true, false]) {
    const profile = `${PROFILE_DIR}-${stay}`;
    const launch = () => chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM, args: ARGS, ignoreHTTPSErrors: true, userAgent: UA_LINUX,
    });
    let context = await launch();
    let page = context.pages()[0] || await context.newPage();
    await signIn(page, "stella", { stay });
    const cookie = await sessionCookie(context);
    if (stay) {
      const days = (cookie.expires - Date.now() / 1000) / 86400;
      assert.ok(days > 6.9 && days <= 7.01, `persistent for the remember-me lifetime, got ${days} days`);
    } else {
      assert.equal(cookie.expires, -1);
    }
    await context.close();
    context = await launch();
    page = context.pages()[0] || await context.newPage();
    await page.goto(`${BASE}/account`);
    if (stay) {
      assert.match(page.url(), /\/account$/, "still signed in after the restart");
    } else {
      assert.match(page.url(), /\/login/, "signed out by closing the browser");
    }
    await context.close();
  }
  const { live } = await sessionsOf("stella");
  assert.ok(live.some((s) => s.remember_me) && live.some((s) => !s.remember_me));
});

scenario("asvs4_2_2_wrong_password_unknown_user_and_throttling", async () => {
  await addUser("trudy");
  const context = await newContext();
  const page = await context.newPage();
  const attempt = async (username, password) => {
    await page.goto(`${BASE}/login`);
    await page.fill("#username", username);
    await page.fill("#password", password);
    const [response] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith("/login") && r.request().method() === "POST"),
      page.click("main button[type=submit]"),
    ]);
    return { status: response.status(), text: await page.locator("#error").innerText() };
  };
  const wrong = await attempt("trudy", "not the password");
  const unknown = await attempt("nobody-here", "not the password");
  assert.equal(wrong.status, 401);
  assert.deepEqual(unknown, wrong, "unknown user and wrong password look the same");
  await shot(page, "03-wrong-password");
  for (let i = 0; i < 4; i++) await attempt("trudy", "still wrong");
  const blocked = await attempt("trudy", "still wrong");
  assert.equal(blocked.status, 429);
  assert.match(blocked.text, /Too many failed sign-in attempts\. Wait \d+ seconds/);
  // Even the right password waits until the back-off is over; then it works.
  const waiting = await attempt("trudy", PASSWORD);
  assert.equal(waiting.status, 429);
  await shot(page, "04-throttled");
  await advance(5 * 60 * 1000);
  await signIn(page, "trudy");
  await context.close();
});

scenario("asvs4_3_2_1_owasp_sm_9_fixation_planted_tokens_are_useless", async () => {
  await addUser("victim");
  await addUser("mallory");
  const cookieOf = (value) => ({ name: "__Host-portcullis", value, url: BASE, secure: true, httpOnly: true, sameSite: "Lax" });
  // 1. A token we never issued is not adopted.
  const victim = await newContext();
  const page = await victim.newPage();
  const invented = "pcs_" + "A".repeat(43);
  await victim.addCookies([cookieOf(invented)]);
  await page.goto(`${BASE}/account`);
  assert.match(page.url(), /\/login/, "a token we never issued is not accepted");
  // 2. The attacker signs in and plants their own live token while the victim's sign-in
  //    form is open; the victim's sign-in gets a fresh token, the planted one stays mallory's.
  const attacker = await newContext();
  const attackerPage = await attacker.newPage();
  await signIn(attackerPage, "mallory");
  const planted = (await sessionCookie(attacker)).value;
  await page.goto(`${BASE}/login`);
  await victim.addCookies([cookieOf(planted)]);
  await page.fill("#username", "victim");
  await page.fill("#password", PASSWORD);
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/login\/stay$/);
  await page.click("#stay-no");
  await page.waitForURL(/\/account$/);
  const issued = (await sessionCookie(victim)).value;
  assert.notEqual(issued, planted);
  assert.notEqual(issued, invented);
  assert.equal(await page.locator(".who").innerText(), "victim");
  // One SSO session per browser: the planted session was the browser's, so the victim's sign-in
  // ended it instead of adopting it.
  await attackerPage.goto(`${BASE}/account`);
  assert.match(attackerPage.url(), /\/login/, "the planted token never became the victim's; it ended");
  await attacker.close();
  await victim.close();
});

scenario("asvs4_3_3_4_two_devices_listed_and_signing_out_the_other_ends_it", async () => {
  await addUser("bob");
  const laptop = await newContext({ userAgent: UA_LINUX });
  const phone = await newContext({ userAgent: UA_PHONE });
  const laptopPage = await laptop.newPage();
  const phonePage = await phone.newPage();
  await signIn(laptopPage, "bob");
  await signIn(phonePage, "bob");
  await laptopPage.goto(`${BASE}/account`);
  const rows = laptopPage.locator("#sessions tbody tr");
  assert.equal(await rows.count(), 2);
  const current = laptopPage.locator("#sessions tr.current");
  assert.match(await current.innerText(), /Chrome on Linux/);
  assert.match(await current.innerText(), /This device/);
  const other = laptopPage.locator("#sessions tbody tr:not(.current)");
  assert.match(await other.innerText(), /Chrome on Android/);
  assert.match(await other.innerText(), /127\.0\.0\.1/);
  await shot(laptopPage, "05-account-two-devices");
  await other.getByRole("button", { name: /Sign out/ }).click();
  await laptopPage.waitForURL(/done=signed_out_one/);
  assert.equal(await laptopPage.locator("#sessions tbody tr").count(), 1);
  await phonePage.goto(`${BASE}/account`);
  assert.match(phonePage.url(), /\/login/, "the phone's session ended at once");
  await laptop.close();
  await phone.close();
});

scenario("asvs4_3_3_4_account_lists_application_sessions_by_application_name", async () => {
  await addUser("dora");
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, "dora");
  const { id } = await control("POST", "/app-session?username=dora");
  await page.goto(`${BASE}/account`);
  const row = page.locator(`#sessions tr[data-session="${id}"]`);
  assert.match(await row.innerText(), /Shop, Firefox on Linux/);
  assert.match(await row.innerText(), /192\.0\.2\.7/);
  const mine = page.locator("#sessions tr.current");
  assert.doesNotMatch(await mine.innerText(), /Shop/, "the SSO session names no application");
  await shot(page, "05b-account-application-session");
  await row.getByRole("button", { name: /Sign out/ }).click();
  await page.waitForURL(/done=signed_out_one/);
  assert.equal(await page.locator(`#sessions tr[data-session="${id}"]`).count(), 0);
  const { live } = await sessionsOf("dora");
  assert.equal(live.length, 1, "the application session ended; the SSO session goes on");
  await context.close();
});

scenario("asvs4_3_3_3_password_change_ends_the_other_sessions", async () => {
  await addUser("carol");
  const one = await newContext();
  const two = await newContext({ userAgent: UA_PHONE });
  const page = await one.newPage();
  const otherPage = await two.newPage();
  await signIn(page, "carol");
  await signIn(otherPage, "carol");
  const before = (await sessionCookie(one)).value;
  await page.goto(`${BASE}/account`);
  await page.click("#change-password");
  await page.waitForURL(/\/account\/password$/);
  assert.ok(await page.isChecked("#sign-out-others"), "sign out everywhere else is checked by default");
  await page.fill("#current-password", PASSWORD);
  await page.fill("#new-password", "a much better passphrase");
  await page.fill("#confirm-password", "a much better passphrase");
  await shot(page, "06-change-password");
  await page.click("main button[type=submit]");
  await page.waitForURL(/done=password_others/);
  assert.notEqual((await sessionCookie(one)).value, before, "the token rotated (OWASP-SM-11)");
  await otherPage.goto(`${BASE}/account`);
  assert.match(otherPage.url(), /\/login/);
  const { ended_reasons } = await sessionsOf("carol");
  assert.ok(ended_reasons.includes("password_changed"), JSON.stringify(ended_reasons));
  const fresh = await newContext();
  const freshPage = await fresh.newPage();
  await signIn(freshPage, "carol", { password: "a much better passphrase" });
  await one.close(); await two.close(); await fresh.close();
});

scenario("asvs5_7_5_1_reauthentication_demanded_and_passed", async () => {
  await addUser("dave");
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, "dave");
  await advance(100 * 1000); // past the 90 s elevation lifetime, inside the 2 min idle timeout
  await page.goto(`${BASE}/account/password`);
  assert.match(page.url(), /\/reauth\?return_to=\/account\/password$/);
  await shot(page, "07-reauthenticate");
  await page.fill("#password", "wrong");
  await page.click("main button[type=submit]");
  assert.match(await page.locator("#error").innerText(), /did not match/);
  const before = (await sessionCookie(context)).value;
  await page.fill("#password", PASSWORD);
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/account\/password$/);
  assert.notEqual((await sessionCookie(context)).value, before, "re-authentication rotates the token");
  await page.getByRole("heading", { name: "Change password" }).waitFor();
  await context.close();
});

scenario("nist4_3_expiry_warning_appears_and_stay_signed_in_extends", async () => {
  await addUser("erin");
  const context = await newContext();
  const page = await context.newPage();
  await page.clock.install();
  await signIn(page, "erin");
  await page.goto(`${BASE}/account`);
  await advance(70 * 1000); // 50 s of the 2 min idle timeout left; the warning starts at 60 s
  await page.clock.runFor(31 * 1000);
  const banner = page.locator("#portcullis-expiry");
  await banner.waitFor({ state: "visible" });
  assert.match(await page.locator("#portcullis-expiry-countdown").innerText(), /^0:\d\d$/);
  await shot(page, "08-expiry-warning");
  await page.click("#portcullis-stay");
  await banner.waitFor({ state: "hidden" });
  const status = await page.evaluate(async () => (await fetch("/session/status")).json());
  assert.ok(status.expires_in_ms > 110 * 1000, `extended: ${JSON.stringify(status)}`);
  await context.close();
});

scenario("asvs5_7_3_1_expiry_sends_to_sign_in_and_back_reconstituted", async () => {
  await addUser("frida");
  const context = await newContext();
  const page = await context.newPage();
  await page.clock.install();
  await signIn(page, "frida");
  await page.goto(`${BASE}/account?from=expiry`);
  await advance(121 * 1000);
  await page.clock.runFor(31 * 1000);
  // The URL is the assertion; the page's load event is not (on a loaded CI machine it came
  // after Playwright's 30 s while the page was already there, under the installed fake clock).
  await page.waitForURL(/\/login\?expired=1&return_to=%2Faccount%3Ffrom%3Dexpiry$/, { waitUntil: "commit" });
  assert.match(await page.locator(".notice").innerText(), /Your session has ended/);
  await shot(page, "09-expired-sign-in-again");
  await page.fill("#username", "frida");
  await page.fill("#password", PASSWORD);
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/login\/stay$/);
  await page.click("#stay-no");
  await page.waitForURL(/\/account\?from=expiry$/);
  const { live, ended_reasons } = await sessionsOf("frida");
  assert.ok(ended_reasons.includes("expired_idle"));
  assert.equal(live.length, 1);
  assert.ok(live[0].reconstituted_from, "the new session re-constituted the timed-out one");
  await context.close();
});

scenario("asvs5_7_4_3_totp_enrol_and_use", async () => {
  await addUser("gina");
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, "gina");
  await page.goto(`${BASE}/account`);
  await page.click("#two-factor");
  await page.waitForURL(/\/account\/two-factor$/);
  const secret = (await page.locator("#totp-secret").innerText()).trim();
  assert.match(await page.getAttribute("#otpauth-link", "href"), /^otpauth:\/\/totp\/Portcullis:gina\?secret=/);
  await shot(page, "10-two-factor-enrol");
  await page.fill("#code", "000000");
  await page.click("#enrol-totp");
  assert.match(await page.locator("#error").innerText(), /does not match/);
  await page.fill("#code", await totpCode(secret));
  await page.click("#enrol-totp");
  await page.waitForURL(/done=totp_on/);
  await page.click("#sign-out");
  await page.waitForURL(/\/logout$/);
  await advance(31 * 1000); // a code is accepted once: the next sign-in uses the next step
  await page.goto(`${BASE}/login`);
  await page.fill("#username", "gina");
  await page.fill("#password", PASSWORD);
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/login\/otp$/);
  await shot(page, "11-two-factor-code");
  await page.fill("#code", "123456");
  await page.click("main button[type=submit]");
  assert.match(await page.locator("#error").innerText(), /wrong or was already used/);
  await page.fill("#code", await totpCode(secret));
  await page.click("main button[type=submit]");
  await page.waitForURL(/\/login\/stay$/);
  await page.click("#stay-no");
  await page.waitForURL(/\/account$/);
  const { live } = await sessionsOf("gina");
  assert.deepEqual(live[0].methods, ["pwd", "otp"]);
  assert.equal(live[0].level, 2);
  await context.close();
});

scenario("asvs5_14_3_1_sign_out_clears_the_cookie_and_site_data", async () => {
  await addUser("hank");
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, "hank");
  const token = (await sessionCookie(context)).value;
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/logout") && r.request().method() === "POST"),
    page.click("#sign-out"),
  ]);
  assert.equal((await response.allHeaders())["clear-site-data"], '"cache", "cookies", "storage"');
  await page.getByRole("heading", { name: "You are signed out" }).waitFor();
  await shot(page, "12-signed-out");
  assert.equal(await sessionCookie(context), undefined);
  // Replaying the old cookie (the "back" button) finds nobody signed in (ASVS4-3.3.1).
  await context.addCookies([{ name: "__Host-portcullis", value: token, url: BASE, secure: true, httpOnly: true, sameSite: "Lax" }]);
  await page.goto(`${BASE}/account`);
  assert.match(page.url(), /\/login/);
  await context.close();
});

scenario("asvs5_3_5_1_cross_site_form_posts_are_refused", async () => {
  await addUser("ivan");
  const context = await newContext();
  const page = await context.newPage();
  await signIn(page, "ivan");
  const result = await page.evaluate(async () => {
    const r = await fetch("/account/sessions/end-others", {
      method: "POST", body: new URLSearchParams({ csrf: "forged" }),
    });
    return r.status;
  });
  assert.equal(result, 403, "a same-origin post without the session's CSRF token is refused");
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
    for (const context of browser.contexts()) {
      for (const page of context.pages()) {
        const main = await page.locator("main").innerText().catch(() => "(no main)");
        console.log(`  page ${page.url()}: ${main.replace(/\s+/g, " ").slice(0, 300)}`);
        await shot(page, `failed-${name}`).catch(() => {});
      }
      await context.close().catch(() => {});
    }
  }
}
await browser.close();
if (failed) {
  console.log(`${failed} of ${scenarios.length} browser scenarios failed`);
  process.exit(1);
}
console.log(`all browser scenarios passed (${scenarios.length})`);
