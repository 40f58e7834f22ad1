#!/usr/bin/env python3
"""Prepares the OpenID Connect loads of bench/run.sh without a browser (Python stdlib only).

A person is signed in once through the pages, as a browser would (cookie jar, redirects followed by
hand, forms posted); the SSO session cookie it leaves is what the authorization load presents, and
refresh tokens for the refresh load come from authorization requests answered from that session,
each redeemed once at the token endpoint.

  oidc_prep.py signin --system portcullis|peer --base URL --client-id ID --secret S --cookie-file F
                      [--user U --password P | --users FILE]
      Signs in (Portcullis: /oidc/authorize -> /login -> /login/stay -> resume; node-oidc-provider:
      its dev interactions, login and consent for `openid offline_access`) as one person or as each
      person of FILE (lines `username password`), each in a browser of their own; redeems each code
      and checks the answer; writes the SSO cookie(s) of each person to present to --cookie-file, a
      line each (a Cookie header's value), and prints the ID token's signing algorithm.
  oidc_prep.py tokens --system … --base URL --cookie-file F --client-id ID --secret S --n N --out FILE
      Writes N fresh refresh tokens, one a line: each is a new authorization from an SSO session
      (the people of the cookie file in turn; Portcullis: scope `openid`, a refresh token comes with the client's refresh_token grant;
      node-oidc-provider: `openid offline_access` with prompt=consent, which it requires for one,
      so each passes its consent interaction) and one code exchange. The cookie file is rewritten
      with the cookie(s) the session has afterwards.
  oidc_prep.py check-refresh --system … (same arguments, no --n/--out)
      One refresh of a fresh token, then the same old token again: prints whether the system
      rotates (a new refresh_token in the answer) and what a second use of the old token gets.
  oidc_prep.py authorize-path --system … --client-id ID [--scope S]
      Prints the path and query of the authorization request the loads send.
"""

import argparse
import base64
import hashlib
import html
import http.client
import json
import re
import sys
import urllib.parse

REDIRECT_URI = "http://127.0.0.1:8080/cb"
# One PKCE pair for every request (S256): the peer requires PKCE, so both systems get it.
VERIFIER = "portcullis-bench-pkce-verifier-0123456789abcdefghijklmnop"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


def paths(system):
    """(authorization endpoint, token endpoint) of a system."""
    return ("/oidc/authorize", "/oidc/token") if system == "portcullis" else ("/auth", "/token")


def authorize_path(system, client_id, scope, prompt=None, state="bench"):
    query = {
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "scope": scope,
        "state": state,
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    if prompt:
        query["prompt"] = prompt
    return paths(system)[0] + "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def basic(client_id, secret):
    # RFC 6749 §2.3.1: each half form-urlencoded before they are joined.
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return base64.b64encode(raw.encode()).decode()


def jar_of(cookie):
    """A cookie jar from a Cookie header's value."""
    jar = {}
    for pair in (cookie or "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name:
            jar[name] = value
    return jar


class Browser:
    """A cookie jar and one keep-alive connection; redirects are followed by the caller."""

    def __init__(self, base, cookie=None):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port or 80
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        self.jar = jar_of(cookie)

    def send(self, method, path, form=None, headers=None):
        h = dict(headers or {})
        if self.jar:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            h["Content-Type"] = "application/x-www-form-urlencoded"
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=h)
                r = self.conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt:
                    raise
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        data = r.read().decode("utf-8", "replace")
        for name, value in r.getheaders():
            if name.lower() != "set-cookie":
                continue
            pair = value.split(";")[0]
            key, _, val = pair.partition("=")
            key = key.strip()
            if not val or "Max-Age=0" in value or "01 Jan 1970" in value:
                self.jar.pop(key, None)
            else:
                self.jar[key] = val
        return r.status, r.getheader("location"), data


def relative(location):
    """A Location made relative to the server (both systems redirect within themselves)."""
    url = urllib.parse.urlsplit(location)
    return urllib.parse.urlunsplit(("", "", url.path, url.query, ""))


def hidden(page, name):
    m = re.search(r'name="%s" value="([^"]*)"' % re.escape(name), page)
    if not m:
        raise SystemExit(f"no hidden {name} in page:\n{page[:800]}")
    return html.unescape(m.group(1))


def code_of(location):
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    if "code" not in query:
        raise SystemExit(f"no code in the redirect to the client: {location}")
    return query["code"][0]


def follow(b, system, path, user=None, password=None):
    """Follows an authorization request through whatever pages it meets to the redirect to the
    client, and returns the code."""
    for _ in range(16):
        status, location, page = b.send("GET", path)
        if status in (302, 303):
            if location.startswith(REDIRECT_URI):
                return code_of(location)
            path = relative(location)
            continue
        if status != 200:
            raise SystemExit(f"GET {path.split('?')[0]} -> {status}: {page[:800]}")
        if system == "peer":
            # node-oidc-provider's dev interactions: a login or a consent form.
            prompt = re.search(r'name="prompt" value="(\w+)"', page)
            action = re.search(r'<form[^>]*action="([^"]+)"', page)
            if not prompt or not action:
                raise SystemExit(f"no interaction form at {path}:\n{page[:800]}")
            form = {"prompt": prompt.group(1)}
            if form["prompt"] == "login":
                form.update(login=user or "user-1", password=password or "any")
            status, location, page = b.send("POST", relative(html.unescape(action.group(1))), form)
        elif path.startswith("/login/stay"):
            status, location, page = b.send("POST", "/login/stay", {"csrf": hidden(page, "csrf"), "stay": "no"})
        elif path.startswith("/login"):
            return_to = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)["return_to"][0]
            status, location, page = b.send("POST", "/login", {
                "username": user, "password": password, "csrf": hidden(page, "csrf"), "return_to": return_to})
        elif 'name="decision"' in page:
            status, location, page = b.send("POST", "/oidc/consent", {
                "csrf": hidden(page, "csrf"), "request": hidden(page, "request"), "decision": "allow"})
        else:
            raise SystemExit(f"an unexpected page at {path}:\n{page[:800]}")
        if status not in (302, 303):
            raise SystemExit(f"form at {path.split('?')[0]} -> {status}: {page[:800]}")
        if location.startswith(REDIRECT_URI):
            return code_of(location)
        path = relative(location)
    raise SystemExit("never reached the redirect to the client")


def token(b, system, client_id, secret, form):
    status, _, body = b.send("POST", paths(system)[1], form, {"Authorization": "Basic " + basic(client_id, secret)})
    if status != 200:
        raise SystemExit(f"token endpoint -> {status}: {body[:500]}")
    return json.loads(body)


def exchange(b, system, client_id, secret, code):
    return token(b, system, client_id, secret, {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "code_verifier": VERIFIER})


def refresh_scope(system):
    # Portcullis issues a refresh token to a client with the refresh_token grant for `openid`;
    # node-oidc-provider only for `offline_access`, which it keeps only with prompt=consent.
    return ("openid", None) if system == "portcullis" else ("openid offline_access", "consent")


def fresh_refresh_token(b, args):
    scope, prompt = refresh_scope(args.system)
    code = follow(b, args.system, authorize_path(args.system, args.client_id, scope, prompt))
    answer = exchange(b, args.system, args.client_id, args.secret, code)
    if not answer.get("refresh_token"):
        raise SystemExit(f"no refresh_token in the code exchange: {sorted(answer)}")
    return answer["refresh_token"]


def cmd_signin(args):
    if args.users:
        with open(args.users) as f:
            people = [line.split(None, 1) for line in f if line.strip()]
    else:
        people = [[args.user, args.password]]
    scope, prompt = refresh_scope(args.system)
    b = Browser(args.base)
    jars, alg = [], None
    for user, password in people:
        b.jar = {}  # a browser of their own
        code = follow(b, args.system, authorize_path(args.system, args.client_id, scope, prompt), user, password.strip())
        answer = exchange(b, args.system, args.client_id, args.secret, code)
        for field in ("access_token", "id_token"):
            if field not in answer:
                raise SystemExit(f"no {field} in the code exchange: {answer}")
        alg = json.loads(base64.urlsafe_b64decode(answer["id_token"].split(".")[0] + "===")).get("alg")
        jars.append(b.jar)
    print(f"signed in {len(people)} at {args.base}: ID token {alg}, refresh token "
          f"{'yes' if answer.get('refresh_token') else 'no'}", file=sys.stderr)
    save_cookies(jars, args)
    print(alg)


def sso_cookie_names(system):
    return ["__Host-portcullis"] if system == "portcullis" else ["_session", "_session.sig"]


def save_cookies(jars, args):
    """Writes the SSO cookie(s) of each jar to --cookie-file, a line each, as a Cookie header's value."""
    names = sso_cookie_names(args.system)
    lines = []
    for jar in jars:
        missing = [n for n in names if n not in jar]
        if missing:
            raise SystemExit(f"no SSO cookie {missing}; jar: {sorted(jar)}")
        lines.append("; ".join(f"{n}={jar[n]}" for n in names))
    with open(args.cookie_file, "w") as f:
        f.write("\n".join(lines) + "\n")


def jars_of(args):
    with open(args.cookie_file) as f:
        return [jar_of(line.strip()) for line in f if line.strip()]


def cmd_tokens(args):
    jars = jars_of(args)
    b = Browser(args.base)
    with open(args.out, "w") as out:
        for i in range(args.n):
            b.jar = jars[i % len(jars)]  # the people in turn
            out.write(fresh_refresh_token(b, args) + "\n")
    # node-oidc-provider may give a session a new cookie on the way (a consent): keep it.
    save_cookies(jars, args)


def cmd_check_refresh(args):
    jars = jars_of(args)
    b = Browser(args.base)
    b.jar = jars[0]
    old = fresh_refresh_token(b, args)
    save_cookies(jars, args)
    grant = {"grant_type": "refresh_token", "refresh_token": old}
    first = token(b, args.system, args.client_id, args.secret, grant)
    new = first.get("refresh_token")
    rotated = bool(new and new != old)
    status, _, body = b.send("POST", paths(args.system)[1], grant,
                             {"Authorization": "Basic " + basic(args.client_id, args.secret)})
    again = json.loads(body) if body.startswith("{") else {}
    if status == 200 and not rotated:
        second = "200 (the same token stays valid)"
    elif status == 200:
        same = again.get("refresh_token") == new
        second = f"200, {'the same successor (retry grace)' if same else 'another refresh token'}"
    else:
        second = f"{status} {again.get('error', '')}"
    print(f"{args.base}: refresh rotates: {'yes' if rotated else 'no'}; ID token: "
          f"{'yes' if first.get('id_token') else 'no'}; the old token again at once: {second}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("signin", "tokens", "check-refresh", "authorize-path"):
        s = sub.add_parser(name)
        s.add_argument("--system", choices=("portcullis", "peer"), required=True)
        s.add_argument("--client-id", required=True)
        if name == "authorize-path":
            s.add_argument("--scope", default="openid")
            continue
        s.add_argument("--base", required=True)
        s.add_argument("--secret", required=True)
        s.add_argument("--cookie-file", required=True,
                       help="where the SSO cookie(s) are kept: a line per person, a Cookie header's value")
        if name == "signin":
            s.add_argument("--user", default="bench")
            s.add_argument("--password", default="")
            s.add_argument("--users", help="a file of people to sign in, a line each: username password")
        if name == "tokens":
            s.add_argument("--n", type=int, required=True)
            s.add_argument("--out", required=True)
    args = p.parse_args()
    if args.cmd == "signin":
        cmd_signin(args)
    elif args.cmd == "tokens":
        cmd_tokens(args)
    elif args.cmd == "check-refresh":
        cmd_check_refresh(args)
    else:
        print(authorize_path(args.system, args.client_id, args.scope))


if __name__ == "__main__":
    main()
