"""PNG charts of a comparison run or a sweep (matplotlib, Agg backend)."""

import os

from . import report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"ours": "#d62728", "c-reference": "#7f7f7f", "peer": "#1f77b4"}


def _grid(n):
    cols = 2 if n > 1 else 1
    return (n + cols - 1) // cols, cols


def comparison(
    out_dir, workloads, summary, labels, kinds, reference, ws_labels=None, files_labels=None
):
    """One PNG per metric, one panel per workload, servers as horizontal bars (median, with
    the min-max range over rounds where there is one). A WebSocket workload's panel counts
    messages; servers are named as in the tables (report.labels_for). Returns the files
    written."""
    plt = _pyplot()
    written = []
    # (key, title, file, (min key, max key) for the range over rounds, label format,
    #  higher is better, log scale)
    metrics = [
        (
            "rps",
            "requests per second (higher is better; WebSocket: messages)",
            "requests_per_second.png",
            ("rps_min", "rps_max"),
            lambda v: f"{v:,.0f}",
            True,
            False,
        ),
        (
            "cpu_us_per_req",
            "server CPU µs per request (lower is better; log scale; WebSocket: per message)",
            "cpu_us_per_request.png",
            ("cpu_min", "cpu_max"),
            lambda v: "%.1f" % v,
            False,
            True,
        ),
        (
            "lat_p99_ms",
            "latency p99, ms (lower is better; log scale)",
            "latency_p99.png",
            None,
            lambda v: "%.2f" % v,
            False,
            True,
        ),
    ]
    present = [w for w in workloads if any(wn == w.name for (_s, wn) in summary)]
    for key, title, filename, spread, fmt, higher_better, log in metrics:
        if not present:
            break
        nrows, ncols = _grid(len(present))
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(7 * ncols, 0.45 * 12 * nrows + 1), squeeze=False
        )
        for ax in axes.flat[len(present) :]:
            ax.set_visible(False)
        for ax, w in zip(axes.flat, present):
            rows = [(s, r) for (s, wn), r in summary.items() if wn == w.name and r.get(key)]
            # Best at the top (barh draws the first row at the bottom).
            rows.sort(key=lambda sr: sr[1][key], reverse=not higher_better)
            names_of = report.labels_for(w, labels, ws_labels, files_labels)
            names = [names_of.get(s, s) for s, _ in rows]
            values = [r[key] for _, r in rows]
            colors = [COLORS.get(kinds.get(s), "#1f77b4") for s, _ in rows]
            xerr = None
            if spread:
                lo = [max(0, r[key] - (r.get(spread[0]) or r[key])) for _, r in rows]
                hi = [max(0, (r.get(spread[1]) or r[key]) - r[key]) for _, r in rows]
                xerr = [lo, hi]
            bars = ax.barh(names, values, color=colors, xerr=xerr, capsize=2)
            for bar, v in zip(bars, values):
                ax.text(
                    bar.get_width(),
                    bar.get_y() + bar.get_height() / 2,
                    " " + fmt(v),
                    va="center",
                    fontsize=8,
                )
            ax.set_title(w.title, fontsize=10)
            ax.tick_params(axis="y", labelsize=8)
            if log:
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                lo = min(values)
                ax.set_xlim(lo / 2, max(values) * 8)
            else:
                ax.margins(x=0.25)
        fig.suptitle(title)
        fig.tight_layout(rect=(0, 0, 1, 0.98))
        path = os.path.join(out_dir, filename)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    c10k = [(s, r) for (s, wn), r in summary.items() if r.get("mem_per_conn_kib") is not None]
    if c10k:
        c10k.sort(key=lambda sr: sr[1]["mem_per_conn_kib"])
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(c10k) + 1.2))
        bars = ax.barh(
            [labels.get(s, s) for s, _ in c10k],
            [r["mem_per_conn_kib"] for _, r in c10k],
            color=[COLORS.get(kinds.get(s), "#1f77b4") for s, _ in c10k],
        )
        for bar, (_s, r) in zip(bars, c10k):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                " %.1f KiB" % r["mem_per_conn_kib"],
                va="center",
                fontsize=8,
            )
        ax.set_title(
            "server memory per connection at 10,000 connections, KiB (lower is better)", fontsize=10
        )
        ax.margins(x=0.25)
        fig.tight_layout()
        path = os.path.join(out_dir, "memory_per_connection.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def sweep(out_dir, panels, title):
    """One panel per swept dimension: requests/s and server CPU µs/request against its
    values. panels: [(dimension, [(x label, summary row)])]."""
    plt = _pyplot()
    panels = [(name, pts) for name, pts in panels if pts]
    if not panels:
        return []
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3.2 * len(panels)), squeeze=False)
    for ax, (dim, pts) in zip(axes.flat, panels):
        xs = [x for x, _ in pts]
        ax.plot(xs, [r["rps"] for _, r in pts], "o-", color="#d62728")
        ax.set_ylabel("requests/s", color="#d62728")
        ax.set_xlabel(dim)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(xs, [r["cpu_us_per_req"] or 0 for _, r in pts], "s--", color="#1f77b4")
        ax2.set_ylabel("server CPU µs/request", color="#1f77b4")
        ax2.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "sweep.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
