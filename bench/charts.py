"""PNG charts for docs/benchmarks.md (matplotlib, optional).

How this works: one grouped bar chart per topic, drawn from the summary: throughput (MB/s per
mode/direction, one bar per path, error bars from min to max over the runs), session rate,
and NOOP latency (p50 bars with the p99 as a marker). Without matplotlib no charts are drawn
and the markdown simply has no images (`pip install matplotlib`; the `bench` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.paths import LABELS
from bench.phases import COMBOS


def draw(s: dict[str, Any], img_dir: Path) -> dict[str, Path]:
    """Draw the charts into img_dir; returns topic -> file (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    img_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    paths = s["paths"]
    if s["throughput"]:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / len(paths)
        for i, p in enumerate(paths):
            entries = [s["throughput"].get(p, {}).get(f"{m}-{d}") for m, d in COMBOS]
            xs = [k + i * width for k in range(len(COMBOS))]
            med = [e["median"] if e else 0 for e in entries]
            err = [
                [e["median"] - e["min"] if e else 0 for e in entries],
                [e["max"] - e["median"] if e else 0 for e in entries],
            ]
            ax.bar(xs, med, width, yerr=err, capsize=2, label=LABELS[p])
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(COMBOS))])
        ax.set_xticklabels([f"{m.upper()} {d}" for m, d in COMBOS])
        ax.set_ylabel("MB/s (median, min–max)")
        ax.set_title(f"Bulk throughput, {s['config']['size_mib']} MiB transfers")
        ax.legend(fontsize=8, loc="lower right")
        out["throughput"] = _save(fig, img_dir / "bench-throughput.png")
    if s["sessions"]:
        out["sessions"] = _bars(
            plt,
            s["sessions"],
            paths,
            "sessions/s (median, min–max)",
            f"Session rate, {s['config']['workers']} parallel clients",
            img_dir / "bench-sessions.png",
        )
    if s["latency"]:
        out["latency"] = _bars(
            plt,
            s["latency"],
            paths,
            "µs (p50 bar, p99 dot)",
            "NOOP round trip",
            img_dir / "bench-latency.png",
            p99=True,
        )
    return out


def _bars(
    plt: Any,
    data: dict[str, Any],
    paths: list[str],
    ylabel: str,
    title: str,
    file: Path,
    p99: bool = False,
) -> Path:
    names = [p for p in paths if p in data]
    fig, ax = plt.subplots(figsize=(8, 4))
    med = [data[p]["median"] for p in names]
    err = [
        [data[p]["median"] - data[p]["min"] for p in names],
        [data[p]["max"] - data[p]["median"] for p in names],
    ]
    ax.bar(range(len(names)), med, yerr=err, capsize=3, color="tab:blue")
    if p99:
        ax.plot(
            range(len(names)), [data[p]["p99_us"] for p in names], "o", color="tab:red", label="p99"
        )
        ax.legend()
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([LABELS[p].replace(" (", "\n(") for p in names], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, file)


def _save(fig: Any, file: Path) -> Path:
    fig.tight_layout()
    fig.savefig(file, dpi=100)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return file
