"""The report's figures as PNG bytes (matplotlib, imported lazily; every function returns None without it)."""

from __future__ import annotations

import io

import numpy as np

from .summary import Summary

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - no matplotlib (or a broken one): the report renders without plots
        return None
    return plt


def _png(fig, plt) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pr_curves(summaries: list[Summary], labels: list[str]) -> bytes | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for k, (s, lab) in enumerate(zip(summaries, labels)):
        c = COLORS[k % len(COLORS)]
        p, r, _ = s.sweep_all.micro
        ok = (s.sweep_all.tp + s.sweep_all.fp) > 0
        ax.plot(r[ok], p[ok], color=c, lw=2, label=f"{lab} micro (AP {s.result['headline']['micro_ap']:.3f})")
        if len(summaries) == 1:
            for j, (cat, sw) in enumerate(s.sweep_by_category.items()):
                cp, cr, _ = sw.micro
                cok = (sw.tp + sw.fp) > 0
                if cok.sum() > 1 and sw.tags_with_support:
                    ax.plot(cr[cok], cp[cok], color=COLORS[(j + 2) % len(COLORS)], lw=1, ls="--", label=f"{cat} micro")
        h = s.result["headline"]
        ax.plot([h["micro_recall"]], [h["micro_precision"]], "o", color=c, ms=8, mec="black",
                label=f"{lab} at chosen thresholds")
        cross = s.result["f1_at_pr"]["micro"]
        if cross:
            ax.plot([cross["recall"]], [cross["precision"]], "s", color=c, ms=7, mec="black",
                    label=f"{lab} P=R @ {cross['threshold']:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Precision-recall (micro, all evaluated tags)")
    return _png(fig, plt)


def f1_vs_threshold(s: Summary) -> bytes | None:
    plt = _plt()
    if plt is None:
        return None
    sw = s.sweep_all
    p, r, f = sw.micro
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.plot(sw.thresholds, f, color=COLORS[0], lw=2, label="micro F1")
    ax.plot(sw.thresholds, sw.macro_f1, color=COLORS[1], lw=2, label="macro F1")
    ax.plot(sw.thresholds, p, color=COLORS[0], lw=1, ls=":", label="micro precision")
    ax.plot(sw.thresholds, r, color=COLORS[0], lw=1, ls="--", label="micro recall")
    for key, c in (("micro", COLORS[0]), ("macro", COLORS[1])):
        cross = s.result["f1_at_pr"][key]
        if cross:
            ax.axvline(cross["threshold"], color=c, alpha=0.5, lw=1)
            ax.annotate(f"{key} P=R\n{cross['threshold']:.3f}", (cross["threshold"], 0.02 if key == "micro" else 0.12),
                        fontsize=7, color=c, xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("global threshold")
    ax.set_ylabel("score")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("F1, precision and recall against one global threshold")
    return _png(fig, plt)


def f1_vs_frequency(s: Summary) -> bytes | None:
    plt = _plt()
    if plt is None:
        return None
    tags = [t for t in s.result["tags"] if t["support"] > 0]
    if not tags:
        return None
    use_train = any(t["train_count"] > 0 for t in tags)
    x = np.array([t["train_count"] if use_train else t["support"] for t in tags], dtype=float)
    y = np.array([t["f1"] for t in tags])
    cats = sorted({t["category"] for t in tags})
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for k, cat in enumerate(cats):
        sel = np.array([t["category"] == cat for t in tags])
        ax.scatter(np.maximum(x[sel], 0.8), y[sel], s=12, alpha=0.6, color=COLORS[k % len(COLORS)], label=cat)
    if len(tags) >= 10:  # running median over frequency-sorted tags
        order = np.argsort(x)
        w = max(3, len(tags) // 10)
        med = [np.median(y[order][max(0, i - w // 2): i + w // 2 + 1]) for i in range(len(order))]
        ax.plot(np.maximum(x[order], 0.8), med, color="black", lw=1.5, label="running median")
    ax.set_xscale("log")
    ax.set_xlabel("images with the tag in the training split (dataset count)" if use_train else "positives in this split")
    ax.set_ylabel("F1 at the chosen thresholds")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Per-tag F1 against tag frequency")
    return _png(fig, plt)


def best_worst(s: Summary, n: int = 15, min_support: int = 3) -> bytes | None:
    plt = _plt()
    if plt is None:
        return None
    tags = [t for t in s.result["tags"] if t["support"] >= min_support]
    if len(tags) < 2:
        tags = [t for t in s.result["tags"] if t["support"] > 0]
    if len(tags) < 2:
        return None
    tags.sort(key=lambda t: (-t["f1"], -t["support"]))
    k = min(n, len(tags) // 2)
    best, worst = tags[:k], tags[-k:][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.28 * k + 1.4))
    for ax, group, title, c in ((axes[0], best, "best", COLORS[2]), (axes[1], worst, "worst", COLORS[1])):
        names = [f"{t['name']} ({t['support']})" for t in group][::-1]
        vals = [t["f1"] for t in group][::-1]
        ax.barh(names, vals, color=c)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(f"{k} {title} tags by F1 (support >= {min_support if len(tags) > 1 else 1})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig, plt)


def compare_tags(a: Summary, b: Summary, la: str, lb: str) -> bytes | None:
    plt = _plt()
    if plt is None:
        return None
    fa = {t["name"]: t for t in a.result["tags"] if t["support"] > 0}
    fb = {t["name"]: t for t in b.result["tags"] if t["support"] > 0}
    common = sorted(set(fa) & set(fb))
    if not common:
        return None
    x = np.array([fa[n]["f1"] for n in common])
    y = np.array([fb[n]["f1"] for n in common])
    sup = np.array([fa[n]["support"] for n in common], dtype=float)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.scatter(x, y, s=8 + 40 * sup / sup.max(), alpha=0.5, color=COLORS[0])
    ax.plot([0, 1], [0, 1], color="grey", lw=1)
    ax.set_xlabel(f"F1 of {la}")
    ax.set_ylabel(f"F1 of {lb}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"Per-tag F1 ({(y > x).sum()} tags better in {lb}, {(x > y).sum()} in {la})", fontsize=9)
    return _png(fig, plt)
