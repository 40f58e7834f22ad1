// Portcullis expiry warning. Include it with
//   <script src="…/assets/expiry.js" defer data-status-url="…" data-extend-url="…"
//           data-login-url="…" data-logout-url="…" [data-csrf-token="…"]></script>
// status-url: GET → 200 {"expires_in_ms", "warn_before_ms"} while signed in (must not count as
//             activity), 401 once the session is over.
// extend-url: POST (header X-CSRF-Token) → the same JSON; counts as activity, so it moves the
//             idle deadline and never the absolute one.
// It shows a countdown inside the warning lead time, offers "Stay signed in" and "Sign out",
// and at expiry moves the page to sign-in with return_to = this page.
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var cfg = script.dataset;
  var meta = document.querySelector('meta[name="portcullis-csrf"]');
  var csrf = cfg.csrfToken || (meta ? meta.content : "");
  var deadline = 0;
  var warnBefore = 0;
  var pollTimer = null;
  var tickTimer = null;
  var banner = null;
  var countdown = null;

  function here() { return location.pathname + location.search; }

  function toSignIn() {
    var sep = cfg.loginUrl.indexOf("?") < 0 ? "?" : "&";
    location.assign(cfg.loginUrl + sep + "expired=1&return_to=" + encodeURIComponent(here()));
  }

  function build() {
    banner = document.createElement("div");
    banner.id = "portcullis-expiry";
    banner.setAttribute("role", "alertdialog");
    banner.setAttribute("aria-live", "assertive");
    banner.setAttribute("aria-labelledby", "portcullis-expiry-text");
    var s = banner.style;
    s.position = "fixed"; s.left = "50%"; s.bottom = "1.5rem"; s.transform = "translateX(-50%)";
    s.background = "#1d2330"; s.color = "#fff"; s.padding = "1rem 1.25rem"; s.borderRadius = ".5rem";
    s.boxShadow = "0 6px 24px rgba(0,0,0,.25)"; s.zIndex = "2147483647"; s.maxWidth = "32rem";
    s.fontFamily = "system-ui, sans-serif";
    var text = document.createElement("p");
    text.id = "portcullis-expiry-text";
    text.style.margin = "0 0 .75rem";
    text.appendChild(document.createTextNode("Your session ends in "));
    countdown = document.createElement("strong");
    countdown.id = "portcullis-expiry-countdown";
    text.appendChild(countdown);
    text.appendChild(document.createTextNode(". Do you want to stay signed in?"));
    var stay = button("Stay signed in", "portcullis-stay", extend);
    var out = button("Sign out", "portcullis-sign-out", signOut);
    out.style.background = "transparent"; out.style.border = "1px solid #fff";
    banner.appendChild(text); banner.appendChild(stay); banner.appendChild(out);
    banner.hidden = true;
    document.body.appendChild(banner);
  }

  function button(label, id, action) {
    var b = document.createElement("button");
    b.type = "button"; b.id = id; b.textContent = label;
    var s = b.style;
    s.marginRight = ".75rem"; s.padding = ".45rem .9rem"; s.border = "0"; s.borderRadius = ".35rem";
    s.background = "#4d8ef7"; s.color = "#fff"; s.fontSize = "1rem"; s.cursor = "pointer";
    b.addEventListener("click", action);
    return b;
  }

  function format(ms) {
    var total = Math.max(0, Math.ceil(ms / 1000));
    var m = Math.floor(total / 60), sec = total % 60;
    return m + ":" + (sec < 10 ? "0" : "") + sec;
  }

  function show() {
    if (banner.hidden) { banner.hidden = false; banner.querySelector("button").focus(); }
    tick();
  }

  function hide() {
    banner.hidden = true;
    if (tickTimer) { clearInterval(tickTimer); tickTimer = null; }
  }

  function tick() {
    var left = deadline - Date.now();
    countdown.textContent = format(left);
    if (left <= 0) { hide(); poll(); return; }
    if (!tickTimer) { tickTimer = setInterval(tick, 1000); }
  }

  function apply(body) {
    deadline = Date.now() + body.expires_in_ms;
    warnBefore = body.warn_before_ms;
    if (body.expires_in_ms <= warnBefore) { show(); } else { hide(); }
    schedule(body.expires_in_ms);
  }

  function schedule(expiresIn) {
    if (pollTimer) { clearTimeout(pollTimer); }
    // Ask again when the warning is due, at least every 30 s (another tab may have been active).
    var until = expiresIn > warnBefore ? expiresIn - warnBefore : expiresIn;
    pollTimer = setTimeout(poll, Math.max(1000, Math.min(30000, until)));
  }

  function handle(response) {
    if (response.status === 401) { toSignIn(); return null; }
    if (!response.ok) { schedule(5000 + warnBefore); return null; }
    return response.json().then(apply);
  }

  function poll() {
    fetch(cfg.statusUrl, { credentials: "same-origin", cache: "no-store" })
      .then(handle)
      .catch(function () { schedule(5000 + warnBefore); });
  }

  function extend() {
    fetch(cfg.extendUrl, { method: "POST", credentials: "same-origin", cache: "no-store",
                           headers: { "X-CSRF-Token": csrf } })
      .then(handle)
      .catch(function () { schedule(5000 + warnBefore); });
  }

  function signOut() {
    var form = document.createElement("form");
    form.method = "post"; form.action = cfg.logoutUrl;
    var field = document.createElement("input");
    field.type = "hidden"; field.name = "csrf"; field.value = csrf;
    form.appendChild(field);
    document.body.appendChild(form);
    form.submit();
  }

  function start() { build(); poll(); }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
