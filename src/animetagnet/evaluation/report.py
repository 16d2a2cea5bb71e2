"""Writes the evaluation report: a self-contained report.html (plots and thumbnails embedded) and metrics.json.

The HTML comes from templates/report.html.j2 through Jinja2 with autoescape: this module
only gathers values (numbers, names, data URIs), the template owns every tag.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..fileio import atomic_write_json, atomic_write_text, json_safe  # noqa: F401 - json_safe for the CLI
from . import plots
from .summary import Summary


def _f(v: Any, digits: int = 3) -> str:
    """A table or card value: floats to `digits` decimals, "–" when missing (escaped by the template)."""
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def _environment():
    try:
        import jinja2
    except ImportError:
        raise UsageError("--report needs jinja2: pip install 'animetagnet[report]'") from None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
        autoescape=True,  # every tag name, path and message is text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["fmt"] = _f
    return env


def _png(png: bytes | None, alt: str) -> tuple[str | None, str]:
    return ("data:image/png;base64," + base64.b64encode(png).decode() if png else None), alt


def _thumb(path: str, size: int = 160) -> str | None:
    try:
        from PIL import Image

        from ..images import load_image, pad_to_square, to_rgb_on_white

        img = pad_to_square(to_rgb_on_white(load_image(path)))
        img.thumbnail((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a thumbnail is decoration; the report must still render
        return None


def _cards(res: dict[str, Any]) -> list[tuple[Any, str, str]]:
    h, pr, ex = res["headline"], res["f1_at_pr"], res["example_based"]
    return [
        (h["micro_f1"], "micro-F1", "at the chosen thresholds"),
        (h["macro_f1"], "macro-F1", f"mean over {h['tags_with_support']} tags with positives"),
        (h["micro_precision"], "micro precision", "chosen thresholds"),
        (h["micro_recall"], "micro recall", "chosen thresholds"),
        (h["map"], "mAP", "mean per-tag average precision"),
        (pr["micro"]["f1"] if pr["micro"] else None, "micro-F1 at P=R",
         f"threshold {pr['micro']['threshold']:.4f} (WD v2 cards' figure)" if pr["micro"] else ""),
        (pr["macro"]["f1"] if pr["macro"] else None, "macro-F1 at P=R",
         f"threshold {pr['macro']['threshold']:.4f} (WD v3 cards' figure)" if pr["macro"] else ""),
        (ex["jaccard"], "example Jaccard", "per image |T∩P|/|T∪P|"),
    ]


def _chips(names: list[str], truth: np.ndarray, pred: np.ndarray, scores: np.ndarray, limit: int = 40) -> tuple[list, int]:
    """(up to `limit` (class, score, name) chips: correct, then false positives, then misses; how many more)."""
    items = []
    for order, cls, cols in ((0, "tp", truth & pred), (1, "fp", ~truth & pred), (2, "fn", truth & ~pred)):
        items += [(order, -float(scores[j]), cls, names[j]) for j in np.flatnonzero(cols)]
    items.sort(key=lambda t: (t[0], t[1]))
    return [(cls, -neg, name) for _, neg, cls, name in items[:limit]], len(items) - limit


def _examples(summaries: list[Summary], labels: list[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    s = summaries[0]
    y = s.data.y_true
    count = len(y)
    if count == 0 or n <= 0:
        return []
    inter = (y & s.predictions).sum(1)
    f1 = np.divide(2 * inter, y.sum(1) + s.predictions.sum(1), out=np.zeros(count), where=(y.sum(1) + s.predictions.sum(1)) > 0)
    rng = np.random.default_rng(seed)
    random_pick = list(rng.choice(count, size=min(n - n // 3, count), replace=False))
    picked = set(int(i) for i in random_pick)
    rest = [i for i in np.argsort(f1, kind="stable") if int(i) not in picked and y[i].any()]
    hard = rest[: n // 3]
    blocks = []
    for title, idx in ((f"{len(random_pick)} images drawn at random (seed {seed})", random_pick),
                       (f"the {len(hard)} hardest images for {labels[0]} (lowest per-image F1)", hard)):
        if not idx:
            continue
        cells = []
        for i in idx:
            rows = []
            for sm, lab in zip(summaries, labels):
                if sm.data.ids != s.data.ids:  # a model that failed on other images: rows differ
                    continue
                chips, more = _chips(sm.data.tag_names, sm.data.y_true[i], sm.predictions[i], sm.data.scores[i])
                rows.append({"label": lab if len(summaries) > 1 else None, "chips": chips, "more": more})
            cells.append({"thumb": _thumb(s.data.images[i]), "id": s.data.ids[i], "true_tags": int(y[i].sum()), "rows": rows})
        blocks.append({"title": title, "cells": cells})
    return blocks


TAG_HEADERS = ["tag", "category", "support", "train count", "predicted", "precision", "recall", "F1", "AP", "threshold", "in model"]


def _tag_rows(res: dict[str, Any]) -> list[list[Any]]:
    tags = sorted(res["tags"], key=lambda t: (-t["support"], t["name"]))
    return [[t["name"], t["category"], t["support"], t["train_count"], t["predicted"], t["precision"], t["recall"],
             t["f1"], t["ap"], t["threshold"], "yes" if t["in_model"] else {"text": "no", "cls": "missing"}] for t in tags]


def _headline_rows(res: dict[str, Any]) -> list[list[Any]]:
    h, pr, ex = res["headline"], res["f1_at_pr"], res["example_based"]
    rows = [
        ["micro precision / recall / F1", f"{h['micro_precision']:.3f} / {h['micro_recall']:.3f} / {h['micro_f1']:.3f}"],
        ["macro precision / recall / F1", f"{h['macro_precision']:.3f} / {h['macro_recall']:.3f} / {h['macro_f1']:.3f}"],
        ["mAP (macro) / micro AP", f"{_f(h['map'])} / {_f(h['micro_ap'])}"],
    ]
    for key in ("micro", "macro"):
        c = pr[key]
        rows.append([f"{key}-F1 at P=R", f"{c['f1']:.3f} (P {c['precision']:.3f}, R {c['recall']:.3f}, threshold {c['threshold']:.4f})" if c else "–"])
    rows += [
        ["example-based precision / recall / F1", f"{ex['precision']:.3f} / {ex['recall']:.3f} / {ex['f1']:.3f}"],
        ["example-based Jaccard (multi-label 'accuracy')", f"{ex['jaccard']:.3f}"],
        ["exact match (all tags of the image right)", f"{ex['exact_match']:.3f}"],
        ["images with no correct tag", f"{ex['images_with_no_correct_tag']} of {ex['images_with_tags']}"],
        ["label accuracy over all (image, tag) pairs", f"{ex['label_accuracy']:.3f} — predicting nothing scores {ex['label_accuracy_if_nothing_predicted']:.3f}: not a quality measure"],
        ["tags per image: true / predicted", f"{h['tags_per_image_true']:.2f} / {h['tags_per_image_predicted']:.2f}"],
    ]
    un = res.get("images_without_tags") or {}
    if un.get("images"):
        per_cat = "; ".join(f"{label}: {c['images_with_a_false_tag']} images, {c['false_tags']} false tags"
                            for label, c in un["false_by_category"].items())
        rows.append(["images without tags (empty caption): nothing predicted",
                     f"{un['clean']:.3f} of {un['images']} ({per_cat})"])
    return rows


def _category_rows(res: dict[str, Any]) -> list[list[Any]]:
    return [[cat, c["tags"], c["tags_in_model"], c["tags_with_support"], c["positives"], c["micro_precision"], c["micro_recall"],
             c["micro_f1"], c["macro_f1"], c["map"], c["micro_f1_at_pr"]["f1"] if c["micro_f1_at_pr"] else None,
             c["macro_f1_at_pr"]["f1"] if c["macro_f1_at_pr"] else None] for cat, c in res["categories"].items()]


def _strategy_rows(res: dict[str, Any]) -> list[list[Any]]:
    return [[s["name"], s["micro_precision"], s["micro_recall"], s["micro_f1"], s["macro_precision"], s["macro_recall"],
             s["macro_f1"], s["example_jaccard"], s["tags_per_image"], {"text": s["description"], "cls": "how"}]
            for s in res["strategies"]]


def _rating(res: dict[str, Any]) -> dict[str, Any] | None:
    r = res["rating"]
    if not r:
        return None
    names = list(r["confusion"])
    return {"accuracy": r["accuracy"], "images_judged": r["images_judged"],
            "labels_model_cannot_output": r["labels_model_cannot_output"], "names": names,
            "rows": [[t] + [r["confusion"][t][p] for p in names] for t in names]}


def _compare(a: Summary, b: Summary, la: str, lb: str) -> dict[str, Any]:
    ra, rb = a.result, b.result
    keys = [("micro_precision", "headline"), ("micro_recall", "headline"), ("micro_f1", "headline"),
            ("macro_precision", "headline"), ("macro_recall", "headline"), ("macro_f1", "headline"), ("map", "headline"),
            ("micro_ap", "headline")]
    rows = []
    for k, sec in keys:
        va, vb = ra[sec][k], rb[sec][k]
        rows.append([k, va, vb, _delta(va, vb)])
    for k in ("micro", "macro"):
        va = ra["f1_at_pr"][k]["f1"] if ra["f1_at_pr"][k] else None
        vb = rb["f1_at_pr"][k]["f1"] if rb["f1_at_pr"][k] else None
        rows.append([f"{k}_f1_at_pr", va, vb, _delta(va, vb)])
    for k in ("f1", "jaccard"):
        va, vb = ra["example_based"][k], rb["example_based"][k]
        rows.append([f"example_{k}", va, vb, _delta(va, vb)])
    rows.append(["tags evaluated (in model)", ra["vocabulary"]["evaluated_tags"], rb["vocabulary"]["evaluated_tags"], ""])
    rows.append(["thresholds", ra["thresholds"]["source"], rb["thresholds"]["source"], ""])
    fa = {t["name"]: t for t in ra["tags"] if t["support"] > 0}
    fb = {t["name"]: t for t in rb["tags"] if t["support"] > 0}
    diffs = sorted(((fb[n]["f1"] - fa[n]["f1"], n) for n in set(fa) & set(fb)))
    worse = [x for x in diffs if x[0] < 0][:10]
    better = [x for x in diffs if x[0] > 0][-10:][::-1]
    tags = [[n, fa[n]["support"], fa[n]["f1"], fb[n]["f1"], _delta(fa[n]["f1"], fb[n]["f1"])] for _, n in better + worse]
    plots_ = [_png(plots.pr_curves([a, b], [la, lb]), "PR curves"), _png(plots.compare_tags(a, b, la, lb), "per-tag F1")]
    return {"rows": rows, "tags": tags, "plots": plots_}


def _delta(va, vb) -> Any:
    if va is None or vb is None:
        return "–"
    d = vb - va
    return {"text": f"{d:+.3f}", "cls": "better" if d > 0 else "worse" if d < 0 else ""}


def render_html(s: Summary, other: Summary | None = None, *, examples: int = 12, labels: tuple[str, str] | None = None) -> str:
    res = s.result
    la = labels[0] if labels else res["model"]["name"]
    lb = labels[1] if labels else (other.result["model"]["name"] if other else "")
    if other is not None and lb == la:
        la, lb = f"A: {la}", f"B: {lb}"
    title = f"Evaluation of {la}" + (f" vs {lb}" if other else "") + f" on {Path(res['dataset']['path']).name}/{res['dataset']['split']}"
    warnings = list(res["warnings"])
    if other is not None:
        warnings += [f"{lb}: {w}" for w in other.result["warnings"] if w not in res["warnings"]]
    figures = None
    if plots._plt() is not None:
        figures = {"main": [_png(plots.pr_curves([s], [la]), "precision-recall"),
                            _png(plots.f1_vs_threshold(s), "F1 against threshold"),
                            _png(plots.f1_vs_frequency(s), "F1 against frequency")],
                   "wide": [_png(plots.best_worst(s), "best and worst tags")]}
    template = _environment().get_template("report.html.j2")
    return template.render(
        res=res, title=title, la=la, lb=lb, warnings=warnings, cards=_cards(res),
        compare=_compare(s, other, la, lb) if other is not None else None,
        headline=_headline_rows(res), plots=figures, strategies=_strategy_rows(res), categories=_category_rows(res),
        rating=_rating(res), examples=_examples([s] + ([other] if other else []), [la, lb] if other else [la], examples),
        tags=_tag_rows(res), tag_headers=TAG_HEADERS,
    )


def write_report(out_dir: str | Path, s: Summary, other: Summary | None = None, *, examples: int = 12) -> Path:
    """Write report.html and metrics.json (with the other model's under "compared_with") into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(s.result)
    if other is not None:
        data["compared_with"] = other.result
    atomic_write_json(out / "metrics.json", data)
    atomic_write_text(out / "report.html", render_html(s, other, examples=examples))
    return out / "report.html"
