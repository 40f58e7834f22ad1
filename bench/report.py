#!/usr/bin/env python3
"""Turns the rows of one bench/run.sh run into BENCHMARKS tables and an SVG chart.

    report.py criterion TARGET/criterion   -> rows for the criterion estimates
    report.py report RESULTS_DIR           -> markdown on stdout, RESULTS_DIR/throughput.svg
"""
import json
import os
import statistics
import sys


def median(values):
    return statistics.median(values) if values else None


def floats(field):
    return [float(v) for v in field.split()] if field.strip() else []


def criterion_rows(root):
    # A bench in a group lives in <group>/<bench>/, one outside a group in <name>/.
    for group in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        benches = [("", os.path.join(root, group))]
        if not os.path.exists(os.path.join(root, group, "new")):
            benches = [(b, os.path.join(root, group, b)) for b in sorted(os.listdir(os.path.join(root, group)))]
        for bench, dir in benches:
            path = os.path.join(dir, "new", "estimates.json")
            if os.path.exists(path):
                with open(path) as f:
                    ns = json.load(f)["mean"]["point_estimate"]
                name = f"{group}/{bench}" if bench else group
                print(f"criterion\t{name}\t{ns:.1f}\t\t\t")


def load(out):
    rows = []
    with open(os.path.join(out, "rows.tsv")) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (6 - len(parts))
            rows.append(parts)
    return rows


def svg_chart(bars, path):
    width, bar_h, gap, left = 760, 22, 8, 300
    top = 40
    height = top + len(bars) * (bar_h + gap) + 30
    top_value = max(v for _, v in bars) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="24" font-size="15" font-weight="bold">Session validation over HTTP, median req/s (wrk, 50 connections, loopback)</text>',
    ]
    for i, (name, value) in enumerate(bars):
        y = top + i * (bar_h + gap)
        w = (width - left - 90) * value / top_value
        color = "#2b6cb0" if name.startswith("portcullis") else ("#888888" if name == "hello" else "#dd6b20")
        label = 'axum "ok" route (ceiling)' if name == "hello" else name
        parts.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + 16}">{value:,.0f}</text>')
    parts.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def report(out):
    rows = load(out)
    with open(os.path.join(out, "env.txt")) as f:
        env = f.read().strip()
    print("# Benchmarks\n")
    print("One full run of `bench/run.sh --write` on this project's machine; every system measured in the same run,")
    print("one at a time, with the same load tool and settings. The machine is noisy: compare ratios, not absolutes.\n")
    print("```\n" + env + "\n```\n")
    print("![validation throughput per system](bench/throughput.svg)\n")

    validate = {r[1]: r for r in rows if r[0] == "validate"}
    med = {k: median(floats(r[2])) for k, r in validate.items()}
    p99 = {k: median(floats(r[3])) for k, r in validate.items()}
    ceiling = med.get("hello")
    print("## 1. Validation over HTTP\n")
    print("One pre-created session; peers `GET /me` with their cookie, Portcullis `POST /v1/sessions/validate` with the token.\n")
    print("| system | req/s per run | median req/s | median p99 ms | ÷ ceiling | non-2xx |")
    print("|---|---|---:|---:|---:|---:|")
    for name, r in validate.items():
        ratio = f"{med[name] / ceiling:.2f}" if ceiling else ""
        print(f"| {name} | {' / '.join(r[2].split())} | {med[name]:,.0f} | {p99[name]:.2f} | {ratio} | {r[4]} |")
    peers = [k for k in med if not k.startswith("portcullis") and k != "hello"]
    ours = [k for k in med if k.startswith("portcullis")]
    if peers and ours:
        print("\nPortcullis ÷ each peer (median req/s):\n")
        print("| | " + " | ".join(peers) + " |")
        print("|---|" + "---:|" * len(peers))
        for o in ours:
            print(f"| {o} | " + " | ".join(f"{med[o] / med[p]:.2f}" for p in peers) + " |")
    svg_chart([(k, v) for k, v in med.items()], os.path.join(out, "throughput.svg"))

    # Target ratios measured in alternating pairs (both systems up at once): the median of the
    # per-round ratios, which the machine's drift between runs does not move.
    pairs = {}
    for r in rows:
        if r[0] == "pair":
            a, b = floats(r[2]), floats(r[3])
            pairs[r[1]] = (median([x / y for x, y in zip(a, b) if y]), r)
    if pairs:
        print("\nThe target ratios again, measured in pairs: both systems up, one run of each in turn (the")
        print("first alternating), so a slower moment of the machine hits both alike.\n")
        if any(name.endswith("/exchange") for name in pairs):
            print("`exchange` is not a peer but the bare exchange (`crates/portcullis-bench/src/bin/exchange.rs`): an")
            print("axum route that reads Portcullis's own validation request and answers the bytes Portcullis answered to")
            print("it, with no work behind them. The \"ok\" ceiling answers two bytes to a bodiless `GET`; the exchange")
            print("shows how much of the distance to it is the request and answer themselves.\n")
        print("| pair | Portcullis req/s per round | partner req/s per round | ratio per round | median ratio | non-2xx |")
        print("|---|---|---|---|---:|---:|")
        for name, (ratio, r) in pairs.items():
            per_round = " / ".join(f"{x / y:.2f}" for x, y in zip(floats(r[2]), floats(r[3])) if y)
            print(f"| {name.replace('/', ' ÷ ')} | {' / '.join(r[2].split())} | {' / '.join(r[3].split())} | {per_round} | {ratio:.2f} | {r[5]} |")

    print("\n## 2. Create, rotate and logout throughput\n")
    print("One 10 s run each after the warm-up (validation has three).")
    print("`create`: a new session for a new subject each request. `rotate`: each answer's new token is rotated again.")
    print("`create+logout`: sessions are created and logged out in turn (about half the requests are each). Peers have")
    print("no rotate; their create is `POST /login`, their logout `POST /logout`.\n")
    print("| operation | system | req/s per run | median req/s | median p99 ms | non-2xx |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        if r[0] in ("create", "rotate", "create+logout"):
            print(f"| {r[0]} | {r[1]} | {' / '.join(r[2].split())} | {median(floats(r[2])):,.0f} | {median(floats(r[3])):.2f} | {r[4]} |")

    print("\n## 3. In-process cost (criterion, mean per operation)\n")
    print("| benchmark | ns |")
    print("|---|---:|")
    crit = {r[1]: float(r[2]) for r in rows if r[0] == "criterion"}
    for name, ns in crit.items():
        print(f"| {name} | {ns:,.0f} |")

    print("\n## 4. Scale\n")
    print("Sessions with no data, 1 % of them expired when the sweep runs. Validation latency is in-process")
    print("(engine + store, 20 000 random sessions). SQLite: written in 10 000-session transactions, then loaded as a")
    print("server loads them (memory = RSS growth of the loading process). Redis: inserted through the store's")
    print("whole write path, 64 at a time (bounded at 200 000), under the default key prefix `pc`; bytes per session =")
    print("`used_memory` growth minus the audit streams, which are reported beside it. `redis_K_bytes` is `MEMORY")
    print("USAGE` per session of each kind of key: `s` records, `ub` subject hashes, `i` id-link hashes, `db` deadline")
    print("buckets, `dd` deadline summaries; the rest of `used_memory` is Redis' own key tables.\n")
    print("| store | sessions | measurements |")
    print("|---|---:|---|")
    for r in rows:
        if r[0] == "scale":
            print(f"| {r[1]} | {int(r[2]):,} | {r[3]} |")

    print("\n## 5. Memory of the server process (RSS)\n")
    print("| system | idle after start | at the end of the validation load |")
    print("|---|---:|---:|")
    idle = {r[1]: r[5] for r in rows if r[0] == "memory"}
    for name, r in validate.items():
        if r[5]:
            print(f"| {name} | {int(idle[name]) // 1024 if idle.get(name) else '–'} MiB | {int(r[5]) // 1024} MiB |")

    print("\n## Targets\n")
    print("| target | measured | met |")
    print("|---|---|---|")

    def target(text, value, ok):
        print(f"| {text} | {value} | {'yes' if ok else '**no**'} |")

    def ratio(ours, theirs):
        """The paired median when the pair ran, else the ratio of the section-1 medians."""
        if f"{ours}/{theirs}" in pairs:
            return pairs[f"{ours}/{theirs}"][0], " (paired)"
        if ours in med and med.get(theirs):
            return med[ours] / med[theirs], ""
        return None, ""

    r, how = ratio("portcullis-sqlite", "hello")
    if r is not None:
        target("embedded store ≥ 70 % of the ceiling", f"{r:.0%}{how}", r >= 0.70)
    if "portcullis-sqlite" in p99:
        target("embedded store p99 < 2 ms at 50 connections", f"{p99['portcullis-sqlite']:.2f} ms", p99["portcullis-sqlite"] < 2)
    r, how = ratio("portcullis-redis", "axum-redis")
    if r is not None:
        target("Redis store ≥ 1.5× tower-sessions on the same Redis", f"{r:.2f}×{how}", r >= 1.5)
    if "express" in med:
        for o in ours:
            r = med[o] / med["express"]
            target(f"{o} ≥ 3× express-session on Redis", f"{r:.1f}×", r >= 3)
    if "engine_memory/validate" in crit:
        ns = crit["engine_memory/validate"]
        target("engine validate on the memory store < 2 µs", f"{ns / 1000:.2f} µs", ns < 2000)
    for r in rows:
        if r[0] == "scale" and r[1] == "redis":
            value = [kv.split("=")[1] for kv in r[3].split() if kv.startswith("redis_bytes_per_session=")]
            if value:
                target(f"bytes per session in Redis ≤ 400, without its audit events ({int(r[2]):,} sessions)", f"{value[0]} B", float(value[0]) <= 400)
    # What the numbers do not say by themselves (profiles, A/B of changes, why a target is
    # missed) is written by hand in bench/analysis.md and kept under the generated tables.
    analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            print("\n" + f.read().strip())


if __name__ == "__main__":
    if sys.argv[1] == "criterion":
        criterion_rows(sys.argv[2])
    else:
        report(sys.argv[2])
