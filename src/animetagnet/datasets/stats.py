"""Dataset statistics: sizes, tags per image, label frequency (long-tail PNG) and coverage.

Coverage of an image = share of its tags that the vocabulary kept. Two denominators:
`all` counts every tag of the image (after alias mapping; rating labels aside), `in_scope`
only tags of the vocabulary's categories that are not excluded as meta. An image with
coverage 0 has none of its true tags in the vocabulary: the original project's failure.
"""

from __future__ import annotations

import hashlib
import io
import statistics
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import atomic_write_bytes
from .splits import SPLITS


@dataclass
class SplitStats:
    images: int = 0
    groups: set = field(default_factory=set)
    tags_before: array = field(default_factory=lambda: array("I"))
    tags_after: array = field(default_factory=lambda: array("I"))
    cov_all: array = field(default_factory=lambda: array("f"))
    cov_scope: array = field(default_factory=lambda: array("f"))
    occ_all: int = 0
    occ_scope: int = 0
    occ_kept: int = 0
    no_tags: int = 0

    def add(self, group: str, n_all: int, n_scope: int, n_kept: int) -> None:
        self.images += 1
        # 64-bit digest instead of the string: distinct-post counting in bounded memory
        # per post, deterministic across runs (unlike hash()), collisions negligible.
        self.groups.add(int.from_bytes(hashlib.blake2b(group.encode("utf-8"), digest_size=8).digest(), "big"))
        self.tags_before.append(n_all)
        self.tags_after.append(n_kept)
        self.occ_all += n_all
        self.occ_scope += n_scope
        self.occ_kept += n_kept
        if n_all:
            self.cov_all.append(n_kept / n_all)
        if n_scope:
            self.cov_scope.append(n_kept / n_scope)
        if n_kept == 0:
            self.no_tags += 1

    def summary(self) -> dict:
        def dist(a: array) -> dict:
            if not a:
                return {"mean": 0.0, "median": 0.0, "min": 0, "max": 0}
            return {"mean": round(sum(a) / len(a), 4), "median": float(statistics.median(a)),
                    "min": min(a), "max": max(a)}

        def mean(a: array) -> float:
            return round(sum(a) / len(a), 4) if a else 0.0

        return {
            "images": self.images,
            "posts": len(self.groups),
            "tags_per_image_source": dist(self.tags_before),
            "tags_per_image_kept": dist(self.tags_after),
            "coverage": {
                "mean_all": mean(self.cov_all),
                "mean_in_scope": mean(self.cov_scope),
                "occurrences_all": round(self.occ_kept / self.occ_all, 4) if self.occ_all else 0.0,
                "occurrences_in_scope": round(self.occ_kept / self.occ_scope, 4) if self.occ_scope else 0.0,
                "images_with_no_kept_tag": self.no_tags,
            },
        }


class DatasetStats:
    def __init__(self) -> None:
        self.splits = {s: SplitStats() for s in SPLITS}

    def summary(self) -> dict:
        total = SplitStats()
        out = {}
        for name, s in self.splits.items():
            out[name] = s.summary()
            total.images += s.images
            total.groups |= s.groups
            total.tags_before.extend(s.tags_before)
            total.tags_after.extend(s.tags_after)
            total.cov_all.extend(s.cov_all)
            total.cov_scope.extend(s.cov_scope)
            total.occ_all += s.occ_all
            total.occ_scope += s.occ_scope
            total.occ_kept += s.occ_kept
            total.no_tags += s.no_tags
        out["all"] = total.summary()
        return out


def label_frequency(train_counts: Counter, vocab_names: set[str], top: int = 50) -> dict:
    ranked = sorted(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [c for n, c in ranked if n in vocab_names]
    return {
        "distinct_tags_in_train": len(ranked),
        "vocabulary_size": len(vocab_names),
        "vocabulary_min_count": min(kept) if kept else 0,
        "vocabulary_max_count": max(kept) if kept else 0,
        "most_frequent": [[n, c] for n, c in ranked[:top]],
    }


def plot_long_tail(train_counts: Counter, vocab_names: set[str], path: Path) -> str | None:
    """Write the rank/frequency plot; returns None on success or why it was not written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'animetagnet[data]'); plot skipped"
    ranked = sorted(train_counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if not ranked:
        return "no tags in the training split; plot skipped"
    ranks = range(1, len(ranked) + 1)
    counts = [c for _, c in ranked]
    kept_r = [r for r, (n, _) in zip(ranks, ranked) if n in vocab_names]
    kept_c = [c for n, c in ranked if n in vocab_names]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    ax.plot(list(ranks), counts, color="0.6", lw=1.2, label=f"all tags in train ({len(ranked):,})")
    ax.scatter(kept_r, kept_c, s=4, color="tab:blue", label=f"vocabulary ({len(kept_c):,})", zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tag rank")
    ax.set_ylabel("training images with the tag")
    ax.set_title("Label frequency (long tail)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    # No Software/date metadata, so reruns give identical bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return None


def render_markdown(info: dict) -> str:
    """A short human-readable report from the dataset.json / stats.json content."""
    st = info["stats"]
    lines = [f"# Dataset report", "", f"Source: `{info['source']['path']}` ({info['source']['format']})", ""]
    split = info.get("split", {})
    if split.get("mode") == "predefined":
        folders = ", ".join(f"{name}/ -> {s}" for s, name in split["folders"].items())
        lines += [f"Splits: predefined by the source's folders ({folders}); `--resplit` hashes instead.", ""]
    elif split.get("ratios"):
        r = split["ratios"]
        lines += [f"Splits: by a hash of the group key, {r['train']:g}/{r['val']:g}/{r['test']:g}.", ""]
    lines.append("| split | posts | images | tags/image (source) | tags/image (kept) | coverage (all) | coverage (in scope) | images with no kept tag |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in (*SPLITS, "all"):
        s = st["splits"][name]
        c = s["coverage"]
        lines.append(
            f"| {name} | {s['posts']:,} | {s['images']:,} | {s['tags_per_image_source']['mean']:.2f} | "
            f"{s['tags_per_image_kept']['mean']:.2f} | {c['mean_all']:.1%} | {c['mean_in_scope']:.1%} | "
            f"{c['images_with_no_kept_tag']:,} |"
        )
    lf = st["label_frequency"]
    lines += ["", f"Vocabulary: {lf['vocabulary_size']:,} tags of {lf['distinct_tags_in_train']:,} seen in "
              f"train; training counts from {lf['vocabulary_min_count']:,} to {lf['vocabulary_max_count']:,}.",
              ""]
    lines.append(f"Long-tail plot: {st['plot'] if st.get('plot') else 'not written: ' + st.get('plot_skipped', '')}")
    skipped = info["counts"].get("skipped", {})
    if skipped:
        lines += ["", "Skipped or noted inputs:", ""]
        for reason, entry in skipped.items():
            lines.append(f"- {entry['count']:,} {reason}")
    return "\n".join(lines) + "\n"
