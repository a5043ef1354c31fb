"""From raw measurements to the summary, the verdict against the targets, and the markdown.

How this works: `summarize(raw)` groups the raw runs (see `bench.phases`) per path and per
mode/direction, takes medians, and computes the spread of each group as (max - min) / median
(the noise between alternating runs on a shared machine). Ratios are taken between medians:
throughput against the kernel path, session rate against `direct`; added latency is the
difference of the p50 medians against `direct`. `verdict(summary)` compares ftpalg with the
issue's targets; `markdown(summary)` renders docs/benchmarks.md (charts: `bench.charts`).
"""

from __future__ import annotations

import statistics
from typing import Any

from bench import idle, loaded
from bench.paths import LABELS, NOTES
from bench.phases import COMBOS

TARGETS = {
    "throughput_vs_kernel": 0.9,
    "cpu_s_per_gib": 0.5,
    "sessions_vs_direct": 0.8,
    "noop_added_p50_us": 200.0,
    "rss_per_session_kib": 20.0,
}


NOTES_TEXT = [
    "- Client, gateway and server share the same vCPUs. The session test saturates them, so "
    "its ratios follow the *machine* CPU per session (a proxy that adds 2 ms to 5 ms of "
    "everything else ends near 0.7x); on a gateway with CPUs of its own they would differ.",
    "- A TCP-terminating proxy pays for two TCP endpoints per connection; on veth the kernel "
    "work of a send (including delivery to the peer) is charged to the sender, so most of "
    "a proxy's CPU here is socket syscalls, not its own code.",
    "- py-spy: `Runner.run` as a *self* frame is time inside uvloop/libuv (C, no Python frame "
    "above); with `--native` the leaf is the syscall and the arrow names the Python line "
    "that made it.",
    "- The kernel path's cost is softirq time: it shows only in the machine-wide CPU column.",
]


def _stats(values: list[float]) -> dict[str, Any]:
    med = statistics.median(values)
    spread = (max(values) - min(values)) / med if med else 0.0
    return {"median": med, "min": min(values), "max": max(values), "spread": spread, "runs": values}


def _by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    s: dict[str, Any] = {
        "machine": raw["machine"],
        "config": raw["config"],
        "paths": raw["paths"],
        "unavailable": raw["unavailable"],
    }
    tp: dict[str, dict[str, Any]] = {}
    for (path, mode, direction), rows in _by(
        raw.get("throughput", []), "path", "mode", "direction"
    ).items():
        entry = _stats([r["mbps"] for r in rows])
        cpu = [r["proxy_cpu_s_per_gib"] for r in rows if r["proxy_cpu_s_per_gib"] is not None]
        entry["proxy_cpu_s_per_gib"] = statistics.median(cpu) if cpu else None
        entry["machine_cpu_s_per_gib"] = statistics.median(r["machine_cpu_s_per_gib"] for r in rows)
        tp.setdefault(path, {})[f"{mode}-{direction}"] = entry
    for combos in tp.values():
        for combo, entry in combos.items():
            base = tp.get("kernel", {}).get(combo)
            entry["vs_kernel"] = entry["median"] / base["median"] if base else None
    s["throughput"] = tp
    s["sessions"] = {}
    for (path,), rows in _by(raw.get("sessions", []), "path").items():
        entry = _stats([r["rate"] for r in rows])
        entry["errors"] = sum(r["errors"] for r in rows)
        cpu = [r["proxy_cpu_ms_per_session"] for r in rows if "proxy_cpu_ms_per_session" in r]
        entry["proxy_cpu_ms_per_session"] = statistics.median(cpu) if cpu else None
        mach = [r["machine_cpu_ms_per_session"] for r in rows if "machine_cpu_ms_per_session" in r]
        entry["machine_cpu_ms_per_session"] = statistics.median(mach) if mach else None
        s["sessions"][path] = entry
    direct = s["sessions"].get("direct")
    for entry in s["sessions"].values():
        entry["vs_direct"] = entry["median"] / direct["median"] if direct else None
    s["latency"] = {}
    for (path,), rows in _by(raw.get("latency", []), "path").items():
        entry = _stats([r["p50_us"] for r in rows])
        entry["p99_us"] = statistics.median(r["p99_us"] for r in rows)
        s["latency"][path] = entry
    base = s["latency"].get("direct")
    for entry in s["latency"].values():
        entry["added_p50_us"] = entry["median"] - base["median"] if base else None
    s["loaded_latency"] = loaded.summarize(raw)
    s["concurrency"] = raw.get("concurrency")
    s["verdict"] = verdict(s)
    return s


def _check(name: str, goal: str, measured: str, ok: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "pass": ok}


def verdict(s: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    tp, alg = s["throughput"], s["throughput"].get("ftpalg", {})
    if alg and "kernel" in tp:
        ratios = {c: e["vs_kernel"] for c, e in alg.items()}
        worst = min(ratios, key=lambda c: ratios[c])
        out.append(
            _check(
                "throughput",
                f">= {TARGETS['throughput_vs_kernel']}x kernel",
                f"{ratios[worst]:.2f}x at worst ({worst}); "
                + ", ".join(f"{c} {r:.2f}x" for c, r in ratios.items()),
                ratios[worst] >= TARGETS["throughput_vs_kernel"],
            )
        )
        peers = [p for p in ("suse", "proftpd") if p in tp]
        behind = [
            f"{c} vs {p}"
            for c in alg
            for p in peers
            if c in tp[p] and alg[c]["median"] <= tp[p][c]["median"]
        ]
        out.append(
            _check(
                "throughput vs C proxies",
                "above SuSE ftp-proxy and proftpd",
                "behind in " + ", ".join(behind)
                if behind
                else f"ahead in all {len(alg)} cases of {', '.join(peers) or 'none'}",
                not behind if peers else None,
            )
        )
        cpu = {c: e["proxy_cpu_s_per_gib"] for c, e in alg.items()}
        hi = max(cpu, key=lambda c: cpu[c])
        out.append(
            _check(
                "CPU per GiB",
                f"<= {TARGETS['cpu_s_per_gib']} s",
                f"{cpu[hi]:.2f} s at worst ({hi}); "
                + ", ".join(f"{c} {v:.2f}" for c, v in cpu.items()),
                cpu[hi] <= TARGETS["cpu_s_per_gib"],
            )
        )
    ses = s["sessions"].get("ftpalg")
    if ses and ses["vs_direct"] is not None:
        out.append(
            _check(
                "session rate",
                f">= {TARGETS['sessions_vs_direct']}x direct",
                f"{ses['median']:.0f}/s = {ses['vs_direct']:.2f}x direct",
                ses["vs_direct"] >= TARGETS["sessions_vs_direct"],
            )
        )
    lat = s["latency"].get("ftpalg")
    if lat and lat["added_p50_us"] is not None:
        out.append(
            _check(
                "NOOP latency",
                f"p50 added <= {TARGETS['noop_added_p50_us']:.0f} us",
                f"+{lat['added_p50_us']:.0f} us (p50 {lat['median']:.0f} us, "
                f"p99 {lat['p99_us']:.0f} us)",
                lat["added_p50_us"] <= TARGETS["noop_added_p50_us"],
            )
        )
    out += loaded.verdict(s)
    out += idle.verdict(s.get("concurrency"), TARGETS["rss_per_session_kib"])
    return out


def _cell(entry: dict[str, Any] | None, ratio_key: str) -> str:
    if not entry:
        return "–"
    ratio = entry.get(ratio_key)
    text = f"{entry['median']:.0f}"
    return f"{text} ({ratio:.2f}×)" if ratio is not None else text


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def markdown(s: dict[str, Any], images: dict[str, str]) -> str:
    m, cfg = s["machine"], s["config"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`.venv/bin/python -m bench`); raw runs in "
        "`bench/results/*.json` (not committed), summary in `bench/summary.json`. "
        "Do not edit by hand.",
        "",
        f"- **Date:** {m['date']}",
        f"- **Machine:** {m['cpu']}, {m['nproc']} vCPU, {m['memory_gib']:.1f} GiB RAM, "
        f"Linux {m['kernel']}, {m['os']}; Python {m['python']}, uvloop {m['uvloop']}, "
        f"curl {m['curl']}, vsftpd as the server; ftpalg {m.get('ftpalg', '?')}",
        f"- **Noise:** shared machine, load average {m['load_before']} before and "
        f"{m['load_after']} after; every number is the median of {cfg['runs']} alternating "
        "runs (path order rotated per round); *spread* = (max − min) / median.",
        f"- **Sizes:** {cfg['size_mib']} MiB per transfer; {cfg['workers']} parallel session "
        f"clients for {cfg['duration']:g} s; {cfg['noops']} NOOPs per latency run; "
        f"{cfg['idle_sessions']} idle sessions.",
        "",
        "## Paths",
        "",
        "| path | setup |",
        "|---|---|",
    ]
    lines += [f"| {LABELS[p]} | {NOTES[p]} |" for p in s["paths"]]
    lines += [f"| {LABELS[p]} | not run: {why} |" for p, why in s["unavailable"].items()]
    lines += [
        "",
        "## Verdict (ftpalg against the targets)",
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
    ]
    for v in s["verdict"]:
        mark = "n/a" if v["pass"] is None else ("PASS" if v["pass"] else "**MISS**")
        lines.append(f"| {v['target']} | {v['goal']} | {v['measured']} | {mark} |")
    if s["throughput"]:
        head = " | ".join(f"{mo.upper()} {d}" for mo, d in COMBOS)
        lines += [
            "",
            "## Bulk throughput",
            "",
            "MB/s (10⁶ bytes/s), in brackets × the kernel path; CPU = the proxy's "
            "process tree (forked children included) per GiB relayed; machine = busy "
            "time of all CPUs per GiB (client, server, kernel and other users included).",
            "",
            f"| path | {head} | proxy CPU s/GiB | machine CPU s/GiB | spread |",
            "|---|" + "---|" * (len(COMBOS) + 3),
        ]
        for p in s["paths"]:
            combos = s["throughput"].get(p, {})
            cells = [_cell(combos.get(f"{mo}-{d}"), "vs_kernel") for mo, d in COMBOS]
            cpu = [e["proxy_cpu_s_per_gib"] for e in combos.values()]
            mach = [e["machine_cpu_s_per_gib"] for e in combos.values()]
            spread = max((e["spread"] for e in combos.values()), default=0.0)
            cpu_txt = "–" if not cpu or cpu[0] is None else f"{min(cpu):.2f}–{max(cpu):.2f}"
            lines.append(
                f"| {LABELS[p]} | " + " | ".join(cells) + f" | {cpu_txt} | "
                f"{min(mach):.2f}–{max(mach):.2f} | {spread:.0%} |"
            )
        if "throughput" in images:
            lines += ["", f"![throughput]({images['throughput']})"]
    if s["sessions"] or s["latency"]:
        lines += [
            "",
            "## Session rate and control latency",
            "",
            "Sessions: connect, banner, USER/PASS, EPSV (PASV via SuSE), LIST, QUIT "
            f"with {cfg['workers']} parallel clients; × direct in brackets. Latency: "
            "NOOP round trip on one logged-in session; added = p50 − direct's p50.",
            "",
            "| path | sessions/s | spread | proxy CPU ms/session | machine CPU ms/session | "
            "NOOP p50 µs | NOOP p99 µs | added p50 µs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in s["paths"]:
            ses, lat = s["sessions"].get(p), s["latency"].get(p)
            lines.append(
                f"| {LABELS[p]} | {_cell(ses, 'vs_direct')} | "
                f"{'–' if not ses else format(ses['spread'], '.0%')} | "
                f"{_num(ses and ses['proxy_cpu_ms_per_session'])} | "
                f"{_num(ses and ses.get('machine_cpu_ms_per_session'))} | "
                f"{_num(lat and lat['median'], '.0f')} | {_num(lat and lat['p99_us'], '.0f')} | "
                f"{_num(lat and lat['added_p50_us'], '+.0f')} |"
            )
        for key in ("sessions", "latency"):
            if key in images:
                lines += ["", f"![{key}]({images[key]})"]
    lines += loaded.markdown(s, cfg)
    lines += idle.markdown(s.get("concurrency"))
    lines += ["", "## Reading the numbers", "", *NOTES_TEXT]
    if s.get("profiles"):
        lines += ["", "## Profiles of missed targets (py-spy, ftpalg process)", ""]
        for name, prof in s["profiles"].items():
            native = "native" in name
            key = "leaf_in" if native and "leaf_in" in prof else "self"
            what = "leaf (syscall) <- innermost Python frame" if key == "leaf_in" else "self time"
            lines += [
                f"**{name}** ({prof['samples']} samples, {prof['what']}); top {what}:",
                "",
                "| % of samples | function |",
                "|---|---|",
            ]
            lines += [f"| {pct:.1f} | `{fn}` |" for fn, pct in prof[key][:10]]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
