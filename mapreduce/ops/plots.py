"""PNG plots of a run for operators: scores, latency and rejections from a validator's reports; training loss.

Figures are drawn with matplotlib's object API (``Figure`` + the Agg canvas), never pyplot: no display, no global
state, safe in a server process or a test. ``*_figure`` functions build a figure; :func:`render_report` and
:func:`plot_loss` write PNG files and return their paths.
"""
from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .reports import ReportSet

FAILED_STATUSES = ("missing", "late", "invalid", "wrong")
MARKERS = "osD^v<>ph*"



def short_names(hotkeys: Iterable[str], length: int = 8, labels: dict[str, str] | None = None) -> dict[str, str]:
    """The shortest prefixes (at least ``length`` characters) that still tell the hotkeys apart; a hotkey in
    ``labels`` is shown as its label, then its prefix ("m0 5Fhx3kQ2")."""
    keys = sorted(set(hotkeys))
    while length < 48 and len({k[:length] for k in keys}) < len(keys):
        length += 4
    labels = labels or {}
    return {k: f"{labels[k]} {k[:length]}" if k in labels else k[:length] for k in keys}


def _label_order(names: dict[str, str], labels: dict[str, str]) -> list[str]:
    """Hotkeys in the order a reader expects: labelled ones by label (m0, m1, ...), then the rest."""
    return sorted(names, key=lambda k: (k not in labels, names[k]))


def _windows_axis(ax, windows: Sequence[int]) -> None:
    """The x axis spans exactly the windows shown, even when nothing was drawn."""
    if windows:
        ax.set_xlim(min(windows) - 0.5, max(windows) + 0.5)


def _save(fig: Figure, path: Path) -> Path:
    for ax in fig.axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # windows are whole numbers
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _legend(ax, count: int) -> None:
    if count:
        ax.legend(fontsize="small", ncol=max(1, count // 12), loc="center left", bbox_to_anchor=(1.01, 0.5))


def scores_figure(rs: ReportSet) -> Figure:
    """Each miner's window score (solid) and smoothed score (dashed) over the windows."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    names = short_names({m for r in rs.reports for m in (*r["scores"], *r["ema"])}, labels=rs.labels)
    miners = _label_order(names, rs.labels)
    # Honest miners often score alike: each next miner is drawn thinner, with a smaller hollow marker, on top of the
    # one before, so coinciding lines stay visible as nested ones.
    for i, m in enumerate(miners):
        color, nested = f"C{i % 10}", 1 - 0.6 * i / max(1, len(miners) - 1)
        pts = [(r["window"], r["scores"][m]) for r in rs.reports if m in r["scores"]]
        ema = [(r["window"], r["ema"][m]) for r in rs.reports if m in r["ema"]]
        if pts:
            ax.plot(*zip(*pts), marker=MARKERS[i % len(MARKERS)], markersize=4 + 8 * nested, markerfacecolor="none",
                    linewidth=0.8 + 2.5 * nested, color=color, label=names[m])
        if ema:
            ax.plot(*zip(*ema), linestyle="--", linewidth=0.8 + 2.5 * nested, color=color, alpha=0.7)
    ax.set(xlabel="window", ylabel="score (dashed: EMA)", ylim=(-0.03, 1.05),
           title=f"miner scores by validator {rs.validator[:8]}, run {rs.run}")
    ax.grid(alpha=0.3)
    _windows_axis(ax, rs.windows)
    _legend(ax, len(miners))
    return fig


def latency_figure(rs: ReportSet) -> Figure:
    """Seconds from the settle time until the validator saw each checked output, per miner; median line. Each
    miner's dots are shifted sideways within the window's slot, so miners with equal latencies stay visible."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    names = short_names({c["miner"] for r in rs.reports for c in r["checks"]}, labels=rs.labels)
    miners = _label_order(names, rs.labels)
    width = 0.6 / max(1, len(miners))
    for i, m in enumerate(miners):
        shift = (i - (len(miners) - 1) / 2) * width
        pts = [(r["window"] + shift, c["latency"]) for r in rs.reports for c in r["checks"]
               if c["miner"] == m and c.get("latency") is not None]
        if pts:
            ax.scatter(*zip(*pts), s=18, color=f"C{i % 10}", label=names[m])
    medians = [(r["window"], statistics.median(lat)) for r in rs.reports
               if (lat := [c["latency"] for c in r["checks"] if c.get("latency") is not None])]
    if medians:
        ax.plot(*zip(*medians), color="black", linewidth=1, label="median")
    ax.set(xlabel="window", ylabel="seconds after the settle time", title=f"output latency, run {rs.run}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _windows_axis(ax, rs.windows)
    _legend(ax, len(miners) + bool(medians))
    return fig


def _stacked(ax, windows: Sequence[int], counts: list[Counter], title: str) -> None:
    reasons = sorted({k for c in counts for k in c})
    bottom = [0] * len(windows)
    for i, reason in enumerate(reasons):
        heights = [c.get(reason, 0) for c in counts]
        ax.bar(windows, heights, bottom=bottom, color=f"C{i % 10}", label=reason)
        bottom = [b + h for b, h in zip(bottom, heights)]
    if not reasons:
        ax.text(0.5, 0.5, "none in these windows", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set(title=title, ylabel="count")
    ax.grid(alpha=0.3, axis="y")
    _windows_axis(ax, windows)
    _legend(ax, len(reasons))


def rejections_figure(rs: ReportSet) -> Figure:
    """Per window: objects rejected, by reason code; and checks that failed, by status."""
    fig = Figure(figsize=(10, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    windows = rs.windows
    _stacked(top, windows, [Counter(r["rejected"]) for r in rs.reports], "objects rejected, by reason")
    failed = [Counter(c["status"] for c in r["checks"] if c["status"] in FAILED_STATUSES) for r in rs.reports]
    _stacked(bottom, windows, failed, "checks failed, by status")
    bottom.set_xlabel("window")
    fig.suptitle(f"rejections seen by validator {rs.validator[:8]}, run {rs.run}")
    return fig


def render_report(rs: ReportSet, out: Path) -> list[Path]:
    """The three report figures into ``out``: scores.png, latency.png, rejections.png."""
    out = Path(out)
    return [_save(scores_figure(rs), out / "scores.png"), _save(latency_figure(rs), out / "latency.png"),
            _save(rejections_figure(rs), out / "rejections.png")]


def plot_loss(rows: Sequence[dict], path: Path, title: str = "training loss") -> Path:
    """Training and held-out loss per window into ``path``: one thin line per peer, the mean over peers thick.

    ``rows``: dicts with ``window``, ``peer``, ``train_loss`` and ``eval_loss`` (the swarm's peers write them).
    """
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for field, color, label in (("train_loss", "C0", "training (own batch)"), ("eval_loss", "C1", "held out")):
        by_peer: dict[int, list[tuple[int, float]]] = {}
        for r in rows:
            by_peer.setdefault(r["peer"], []).append((r["window"], r[field]))
        for pts in by_peer.values():
            ax.plot(*zip(*sorted(pts)), color=color, alpha=0.25, linewidth=0.8)
        windows = sorted({r["window"] for r in rows})
        means = [statistics.mean(r[field] for r in rows if r["window"] == w) for w in windows]
        if windows:
            ax.plot(windows, means, color=color, linewidth=2, marker="o", label=f"{label}, mean over peers")
    ax.set(xlabel="window", ylabel="cross-entropy loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)
