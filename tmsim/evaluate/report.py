"""The leaderboard report: Markdown, JSON and an HTML page with plots (matplotlib, rendered to PNG): the ranking,
loss against compute, validation-loss curves and violations."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .leaderboard import LeaderboardResult, dumps, format_markdown, n_roots, oracle_lines, rl_lines, train_lines


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(result: LeaderboardResult, path: Path) -> Path:
    """Median val-loss change per policy with its bootstrap 95% interval, best at the top."""
    plt = _plt()
    ranked = result.ranked()[::-1]
    y = np.arange(len(ranked))
    med = np.array([s.val_loss_change_pct for s in ranked])
    err = np.array([[s.val_loss_change_pct - s.ci_low for s in ranked], [s.ci_high - s.val_loss_change_pct for s in ranked]])
    colors = ["#888888" if s.upper_bound else ("#2a7ab0" if s.ci_high < 0 else "#c0504d" if s.ci_low > 0 else "#9bbbd4") for s in ranked]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ranked) + 1.5))
    ax.barh(y, med, xerr=err, color=colors, capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [s.policy + (" (upper bound)" if s.upper_bound else "") for s in ranked])
    ax.set_xlabel("median change of final val loss vs doing nothing (%), 95% CI")
    ax.set_title(f"Leaderboard, suite {result.suite.name} ({len(result.roots)} roots)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compute(result: LeaderboardResult, path: Path) -> Path:
    """Loss against compute, one point per policy: the median change of the ranking loss (final, or best with the
    best checkpoint restored) with its 95% interval, against the epochs trained relative to doing nothing. The
    loss-compute front (no other policy both cheaper and better) is joined by a line; lower left is better."""
    plt = _plt()
    ranked = result.ranked()
    best = result.rank_by == "best"
    fig, ax = plt.subplots(figsize=(8.5, 6))
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(ranked):
        y = result.loss(s)
        lo, hi = (s.best_ci_low, s.best_ci_high) if best else (s.ci_low, s.ci_high)
        x = 100 * s.epochs_share
        marker = "s" if s.upper_bound else ("D" if s.stops_only else "o")
        ax.errorbar([x], [y], yerr=[[max(y - lo, 0)], [max(hi - y, 0)]], fmt=marker, color=cmap(i % 20), capsize=3,
                    ms=7, mfc="none" if s.upper_bound else cmap(i % 20), label=s.policy)
        ax.annotate(s.policy + (" (upper bound)" if s.upper_bound else ""), (x, y), textcoords="offset points",
                    xytext=(6, 4 - 10 * (i % 3)), fontsize=7)  # staggered: points near 100% crowd
    front = sorted((100 * s.epochs_share, result.loss(s)) for s in ranked if s.pareto)
    if len(front) > 1:
        ax.plot(*zip(*front), "--", color="#555555", lw=1, zorder=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.axvline(100, color="black", lw=0.5, ls=":")
    ax.set_xlabel("compute: epochs trained, % of doing nothing (sum over roots)")
    what = "best val loss (best checkpoint restored)" if best else "final val loss"
    ax.set_ylabel(f"median change of {what} vs doing nothing (%), 95% CI")
    ax.set_title(f"Loss against compute, suite {result.suite.name} ({n_roots(result)} roots); dashed: the front; "
                 "diamonds: stop policies", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(result: LeaderboardResult, path: Path, max_policies: int = 6) -> Path:
    """Validation-loss curves per (task, scenario) on its first seed, each policy's interventions marked."""
    plt = _plt()
    ranked = [s.policy for s in result.ranked()]
    show = ["constant"] + [p for p in ranked if p != "constant"][: max_policies - 1]
    groups = sorted({(o.task, o.scenario) for o in result.rollouts["constant"]})
    cols = 4
    rows = int(np.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (task, sc) in zip(axes.flat, groups):
        root = min((o for o in result.rollouts["constant"] if o.task == task and o.scenario == sc), key=lambda o: o.seed).root
        for i, pid in enumerate(show):
            o = next((x for x in result.rollouts[pid] if x.root == root), None)
            if o is None:  # a root the policy is not scored on (its training split)
                continue
            ep = [r["epoch"] for r in o.epochs]
            val = [r["val_loss"] if r["val_loss"] is not None else np.nan for r in o.epochs]
            ax.plot(ep, val, color=cmap(i), lw=1.4, label=pid, ls="-" if pid != "constant" else "--")
            surr = [(r["epoch"], r["val_loss"]) for r in o.epochs if r["source"] == "surrogate"]
            if surr:
                ax.plot(*zip(*surr), ".", color=cmap(i), ms=3)
            for d in o.decisions:
                if d["action"] != "continue":
                    v = next((r["val_loss"] for r in o.epochs if r["epoch"] == d["epoch"]), None)
                    ax.plot(d["epoch"], v, marker="v" if d["action"] != "stop" else "X", color=cmap(i), ms=7)
        ax.set_title(f"{task} / {sc}", fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("epoch", fontsize=8)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(show), fontsize=8)
    fig.suptitle("validation loss (log scale) on seed 0 of each scenario; triangles: interventions, X: stop, dots: surrogate epochs", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_violations(result: LeaderboardResult, path: Path) -> Path:
    """Violations per 100 decisions, stacked by kind."""
    plt = _plt()
    ranked = result.ranked()
    kinds = sorted({k for s in ranked for k in s.violations_by_kind})
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(ranked) + 1.5))
    left = np.zeros(len(ranked))
    y = np.arange(len(ranked))[::-1]
    cmap = plt.get_cmap("tab20")
    for i, k in enumerate(kinds):
        vals = np.array([100 * s.violations_by_kind.get(k, 0) / max(1, _decisions(result, s.policy)) for s in ranked])
        ax.barh(y, vals, left=left, color=cmap(i), label=k)
        left += vals
    ax.set_yticks(y, [s.policy for s in ranked])
    ax.set_xlabel("violations per 100 decisions")
    if kinds:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no violations", transform=ax.transAxes, ha="center")
    ax.set_title("constraint violations by kind")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _decisions(result: LeaderboardResult, pid: str) -> int:
    return sum(len(o.decisions) for o in result.rollouts[pid])


def write_report(result: LeaderboardResult, out: str | Path) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.json, leaderboard.html and four PNG plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "md": out / "leaderboard.md", "json": out / "leaderboard.json", "html": out / "leaderboard.html",
        "bars": plot_bars(result, out / "leaderboard.png"), "compute": plot_compute(result, out / "compute.png"),
        "curves": plot_curves(result, out / "curves.png"),
        "violations": plot_violations(result, out / "violations.png"),
    }
    md = format_markdown(result)
    files["md"].write_text(md)
    files["json"].write_text(dumps(result) + "\n")
    files["html"].write_text(_html(result, md))
    return files


def _html(result: LeaderboardResult, md: str) -> str:
    rows = []
    best = result.rank_by == "best"
    for i, s in enumerate(result.ranked(), 1):
        lo, hi = (s.best_ci_low, s.best_ci_high) if best else (s.ci_low, s.ci_high)
        cls = "ub" if s.upper_bound else ("good" if hi < 0 else "bad" if lo > 0 else "")
        reg = "n/a" if s.regret is None else f"{s.regret:.2f}"
        marks = (" (upper bound)" if s.upper_bound else "") + (" (FAILED)" if s.failed else "") + \
            (" *" if s.trained_roots else "") + (" &dagger;" if s.beats_oracle_roots else "") + (" &#9670;" if s.pareto else "")
        other = s.val_loss_change_pct if best else s.best_val_loss_change_pct
        rows.append(f"<tr class='{cls}'><td>{i}</td><td>{html.escape(s.policy)}{marks}</td>"
                    f"<td>{result.loss(s):+.1f}%</td><td>[{lo:+.1f}, {hi:+.1f}]</td><td>{other:+.1f}%</td>"
                    f"<td>{s.epochs_share:.0%}</td><td>{s.epochs_saved_per_run:.1f}</td><td>{reg}</td>"
                    f"<td>{s.unsafe_rate:.1%}</td><td>{s.violations_per_100:.1f}</td><td>{s.fallback_rate:.1%}</td>"
                    f"<td>{s.interventions_per_run:.2f}</td><td>{s.replayed_share:.1%}</td><td>{s.latency_ms_p50:.3f}</td>"
                    f"<td>{s.train_overlap:.0%}</td><td>{html.escape(s.model or '')}</td></tr>")
    rank, other_h = ("best val loss (restored)", "final") if best else ("final val loss", "best (restored)")
    notes = "".join(f"<li>{html.escape(ln)}</li>" for ln in oracle_lines(result) + rl_lines(result) + train_lines(result))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tmsim leaderboard: {html.escape(result.suite.name)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}
td,th{{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}}td:nth-child(2){{text-align:left}}
tr.good td:nth-child(3){{color:#1b6b1b;font-weight:bold}}tr.bad td:nth-child(3){{color:#a11}}tr.ub{{color:#777}}
img{{max-width:100%}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>
<h1>tmsim leaderboard: suite <code>{html.escape(result.suite.name)}</code></h1>
<p>{n_roots(result)} roots, {len(result.roots)} rollouts. Median change of the {rank} against doing nothing on the same
root (negative is better), with a bootstrap 95% interval; compute is the epochs trained relative to doing nothing.
The promotion gate always uses final val loss. &#9670;: on the loss-compute front; &dagger;: beat the oracle on some root;
*: scored on roots it was trained on. Library {result.library_hash[:12]}, surrogate {result.surrogate_id[:12]}.</p>
<ul>{notes}</ul>
<table><tr><th>#</th><th>policy</th><th>{rank}</th><th>95% CI</th><th>{other_h}</th><th>compute</th><th>epochs saved</th>
<th>regret</th><th>unsafe</th><th>viol/100</th><th>fallback</th><th>interv/run</th><th>replayed</th><th>p50 ms</th>
<th>train overlap</th><th>model</th></tr>{''.join(rows)}</table>
<h2>Leaderboard</h2><img src="leaderboard.png" alt="leaderboard bars">
<h2>Loss against compute</h2><img src="compute.png" alt="loss against compute per policy">
<h2>Validation loss per scenario</h2><img src="curves.png" alt="validation loss curves">
<h2>Violations</h2><img src="violations.png" alt="violations by kind">
<h2>All figures</h2><pre>{html.escape(md)}</pre></body></html>
"""
