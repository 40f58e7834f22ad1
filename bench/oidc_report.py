#!/usr/bin/env python3
"""Turns the OpenID Connect rows of one bench/run.sh run ($OUT/oidc.tsv) into the markdown of
BENCHMARKS.md's section "6. OpenID Connect".

  oidc_report.py OUT              print the section (with bench/oidc_analysis.md, written by hand,
                                  after the generated tables)
  oidc_report.py --splice OUT F   replace that section of F (or insert it before "## Targets", or
                                  append it) with the section of OUT; nothing else of F changes

Rows: op, system, round, req/s, p99 ms, non-2xx, the load script's own counts; `rss` rows carry the
server's resident memory (KiB) at the end in the last field.
"""

import os
import re
import statistics
import sys

HEADING = "## 6. OpenID Connect"
PEER = "oidc"
ROTATING = "oidc-rotating"
OPS = [
    ("refresh", "Refresh grant",
     "`POST /token` `grant_type=refresh_token` with HTTP Basic client authentication. Each load starts from "
     "fresh refresh tokens (connections + 8, each its own family, made through the code flow by "
     "`bench/oidc_prep.py`); `bench/lua/oidc_refresh.lua` presents every token once and the successor from its "
     "answer next, so Portcullis's loads are real rotations, never its 10 s retry grace. node-oidc-provider does "
     "not rotate a confidential client's token (its default `rotateRefreshToken`), so its tokens are presented "
     "again, one request at a time each. `oidc-rotating` is a copy of the peer with `rotateRefreshToken: true`."),
    ("authorize", "Authorization request answered from a live SSO session",
     "`GET` of the authorization request (`response_type=code`, `scope=openid`, PKCE S256, `state`) with the "
     "SSO cookie of one of the people signed in through the pages before the loads (Portcullis: "
     "`__Host-portcullis`; the peer: `_session` + `_session.sig` after its login and consent), the people in "
     "turn: `303` to the client with a code. A `303` anywhere else counts as an error."),
    ("code", "Code exchange (access and ID token)",
     "`POST /token` `grant_type=authorization_code` with the PKCE verifier, each code fresh and used once: the codes "
     "of the authorize load just before (topped up by unmeasured authorize loads when too few). No refresh token "
     "on either side: Portcullis's client `bench-code` has the authorization_code grant alone; node-oidc-provider "
     "issues one only for `offline_access`, which it grants only with `prompt=consent`, i.e. through its consent "
     "page. Portcullis starts a client session (a child of the SSO session) and signs a JWT access token and an ID "
     "token; the peer stores an opaque access token and signs the ID token."),
    ("code+refresh", "Code exchange with a refresh token (Portcullis alone)",
     "As above with the client `bench` (authorization_code and refresh_token grants): the exchange also stores "
     "the first refresh token of a new family. The ratio is to the peer's exchange without one (the row above), "
     "so it is not like for like."),
]


def load(out):
    rows, rss = [], {}
    path = os.path.join(out, "oidc.tsv")
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "rss":
                rss[parts[1]] = parts[6]
                continue
            op, system, rnd, rps, p99, bad = parts[:6]
            extra = parts[6] if len(parts) > 6 else ""
            rows.append(dict(op=op, system=system, round=int(rnd), rps=float(rps or 0),
                             p99=float(p99 or 0), bad=int(bad or 0), extra=extra))
    return rows, rss


def fmt(x, digits=0):
    return f"{x:,.{digits}f}"


def section(out):
    rows, rss = load(out)
    env = {}
    env_path = os.path.join(out, "env.txt")
    if os.path.exists(env_path):
        with open(env_path) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition(": ")
                env[key] = value
    checks = []
    checks_path = os.path.join(out, "oidc", "checks.tsv")
    if os.path.exists(checks_path):
        with open(checks_path) as f:
            for line in f:
                system, alg, text = line.rstrip("\n").split("\t", 2)
                checks.append((system, alg, re.sub(r"^http:\S* ", "", text)))

    lines = [HEADING, ""]
    lines.append("Portcullis on SQLite and on Redis next to node-oidc-provider 9 (`../shared/peers/oidc`: one "
                 "confidential client, its Redis adapter, on the run's private Redis), every system up at once; "
                 "ID tokens signed with ES256 on both sides (the peer with `ID_TOKEN_ALG=ES256`; Portcullis also "
                 "signs its JWT access tokens with it). Each round makes one load per system and operation in "
                 "turn, the order reversed every other round; a warm-up round before them is not reported. "
                 "Ratios are taken per round (both loads in the same minute), then the median.")
    lines.append("")
    lines.append("```")
    for key in ("date", "host", "kernel", "oidc", "command"):
        if key in env:
            lines.append(f"{key}: {env[key]}")
    lines.append("```")
    lines.append("")
    if checks:
        lines.append("Before the loads, one refresh of a fresh token and the same old token again at once:")
        lines.append("")
        lines.append("| system | ID token | refresh |")
        lines.append("|---|---|---|")
        for system, alg, text in checks:
            lines.append(f"| {system} | {alg} | {text} |")
        lines.append("")

    targets = []
    for op, title, text in OPS:
        mine = [r for r in rows if r["op"] == op]
        if not mine:
            continue
        lines.append(f"### {title}")
        lines.append("")
        lines.append(text)
        lines.append("")
        peer_op = "code" if op == "code+refresh" else op
        peer = {r["round"]: r["rps"] for r in rows if r["op"] == peer_op and r["system"] == PEER}
        rotating = {r["round"]: r["rps"] for r in rows if r["op"] == op and r["system"] == ROTATING}
        order = ["portcullis-sqlite", "portcullis-redis", PEER, ROTATING]
        systems = sorted({r["system"] for r in mine}, key=lambda n: (order.index(n) if n in order else 9, n))
        extra_head, extra_rule = ("", "")
        if rotating:
            extra_head, extra_rule = (f" median ÷ {ROTATING} |", "---:|")
        lines.append(f"| system | req/s per round | median req/s | median p99 ms | non-2xx | ÷ {PEER} per round "
                     f"| median ÷ {PEER} |{extra_head}")
        lines.append(f"|---|---|---:|---:|---:|---|---:|{extra_rule}")
        for system in systems:
            rs = sorted((r for r in mine if r["system"] == system), key=lambda r: r["round"])
            per = " / ".join(fmt(r["rps"]) for r in rs)
            med = statistics.median(r["rps"] for r in rs)
            p99 = statistics.median(r["p99"] for r in rs)
            bad = sum(r["bad"] for r in rs)
            ratios = [r["rps"] / peer[r["round"]] for r in rs if peer.get(r["round"])]
            if system == PEER or not ratios:
                ratio_text, median_ratio = "", ""
            else:
                ratio_text = " / ".join(f"{x:.2f}" for x in ratios)
                median_ratio = f"{statistics.median(ratios):.2f}"
            extra = ""
            if rotating:
                to_rotating = [r["rps"] / rotating[r["round"]] for r in rs if rotating.get(r["round"])]
                shown = system.startswith("portcullis") and to_rotating
                extra = f" {statistics.median(to_rotating):.2f} |" if shown else " |"
            lines.append(f"| {system} | {per} | {fmt(med)} | {p99:.2f} | {bad} | {ratio_text} | {median_ratio} |{extra}")
            if op == "refresh" and system.startswith("portcullis") and ratios:
                targets.append((system, statistics.median(ratios)))
        lines.append("")

    if rss:
        lines.append("Server memory (RSS) at the end: " + ", ".join(
            f"{system} {int(kb) / 1024:.0f} MiB" for system, kb in rss.items() if kb) + ".")
        lines.append("")
    if targets:
        lines.append("| target | measured | met |")
        lines.append("|---|---|---|")
        for system, ratio in targets:
            lines.append(f"| {system} refresh grant ≥ 2× node-oidc-provider (ES256 both) | {ratio:.2f}× (median of "
                         f"rounds) | {'yes' if ratio >= 2 else '**no**'} |")
        lines.append("")
    analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oidc_analysis.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            lines.append(f.read().rstrip("\n"))
            lines.append("")
    return "\n".join(lines)


def splice(out, path):
    new = section(out).rstrip("\n") + "\n"
    with open(path) as f:
        text = f.read()
    start = text.find(HEADING + "\n")
    if start >= 0:
        m = re.compile(r"^## ", re.M).search(text, start + len(HEADING))
        end = m.start() if m else len(text)
        text = text[:start] + new + ("\n" if m else "") + text[end:]
    else:
        m = re.compile(r"^## Targets", re.M).search(text)
        if m:
            text = text[:m.start()] + new + "\n" + text[m.start():]
        else:
            text = text.rstrip("\n") + "\n\n" + new
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--splice":
        splice(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 2:
        print(section(sys.argv[1]))
    else:
        sys.exit(__doc__)
