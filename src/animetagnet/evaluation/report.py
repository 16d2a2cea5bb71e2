"""Writes the evaluation report: a self-contained report.html (plots and thumbnails embedded) and metrics.json."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_json, atomic_write_text, json_safe  # noqa: F401 - json_safe for the CLI
from . import plots
from .summary import Summary

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1150px;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:4px} h2{margin-top:34px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin-top:0}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:150px;background:#fafafa}
.card .v{font-size:1.7em;font-weight:600} .card .k{font-size:.85em;color:#555} .card .d{font-size:.75em;color:#888}
.warn{background:#fff4e5;border:1px solid #f0b35b;border-radius:6px;padding:8px 12px;margin:8px 0}
table{border-collapse:collapse;font-size:.85em;margin:8px 0} th,td{border-bottom:1px solid #eee;padding:3px 8px;text-align:right}
th{background:#f3f3f3;position:sticky;top:0} td.l,th.l{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:10px} .plots img{max-width:560px;border:1px solid #eee}
.wide img{max-width:1100px}
.ex{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.exi{border:1px solid #ddd;border-radius:8px;padding:8px;display:flex;gap:8px}
.exi img{width:128px;height:128px;object-fit:contain;background:#eee;flex:none}
.chip{display:inline-block;border-radius:4px;padding:0 4px;margin:1px;font-size:.75em}
.tp{background:#d4f5d4;color:#135f13}.fp{background:#fbd5d5;color:#8a1111}.fn{background:#eee;color:#777;text-decoration:line-through}
.mname{font-size:.75em;color:#555;margin-top:4px} .defs dt{font-weight:600} .defs dd{margin:0 0 6px 12px;color:#444}
details summary{cursor:pointer;color:#1f5fa8}
.better{color:#135f13}.worse{color:#8a1111}
"""


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


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


def _table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = []
    for r in rows:
        body.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c if isinstance(c, str) and c.startswith("<") else _f(c)}</td>'
                                     for i, c in enumerate(r)) + "</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def _cards(res: dict[str, Any]) -> str:
    h, pr, ex = res["headline"], res["f1_at_pr"], res["example_based"]
    items = [
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
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{_f(v)}</div><div class="k">{html.escape(k)}</div><div class="d">{html.escape(d)}</div></div>'
        for v, k, d in items) + "</div>"


def _chips(names: list[str], truth: np.ndarray, pred: np.ndarray, scores: np.ndarray, limit: int = 40) -> str:
    items = []
    for j in np.flatnonzero(truth & pred):
        items.append((0, -scores[j], f'<span class="chip tp" title="{scores[j]:.2f}">{html.escape(names[j])}</span>'))
    for j in np.flatnonzero(~truth & pred):
        items.append((1, -scores[j], f'<span class="chip fp" title="{scores[j]:.2f}">{html.escape(names[j])}</span>'))
    for j in np.flatnonzero(truth & ~pred):
        items.append((2, -scores[j], f'<span class="chip fn" title="{scores[j]:.2f}">{html.escape(names[j])}</span>'))
    items.sort(key=lambda t: (t[0], t[1]))
    extra = len(items) - limit
    out = "".join(t[2] for t in items[:limit])
    return out + (f' <span class="chip">+{extra} more</span>' if extra > 0 else "")


def _examples(summaries: list[Summary], labels: list[str], n: int, seed: int = 0) -> str:
    s = summaries[0]
    y = s.data.y_true
    count = len(y)
    if count == 0 or n <= 0:
        return ""
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
            thumb = _thumb(s.data.images[i])
            img = f'<img src="{thumb}" alt="">' if thumb else '<div style="width:128px"></div>'
            rows = []
            for sm, lab in zip(summaries, labels):
                if sm.data.ids != s.data.ids:  # a model that failed on other images: rows differ
                    continue
                rows.append((f'<div class="mname">{html.escape(lab)}</div>' if len(summaries) > 1 else "")
                            + _chips(sm.data.tag_names, sm.data.y_true[i], sm.predictions[i], sm.data.scores[i]))
            cells.append(f'<div class="exi">{img}<div><div class="mname">{html.escape(s.data.ids[i])} · '
                         f'{int(y[i].sum())} true tags</div>{"".join(rows)}</div></div>')
        blocks.append(f"<h3>{html.escape(title)}</h3><div class='ex'>{''.join(cells)}</div>")
    legend = ('<p><span class="chip tp">correct</span> <span class="chip fp">predicted, not in the labels</span> '
              '<span class="chip fn">in the labels, missed</span> (hover a tag for its score)</p>')
    return legend + "".join(blocks)


def _tags_table(res: dict[str, Any]) -> str:
    tags = sorted(res["tags"], key=lambda t: (-t["support"], t["name"]))
    rows = [[t["name"], t["category"], t["support"], t["train_count"], t["predicted"], t["precision"], t["recall"],
             t["f1"], t["ap"], t["threshold"], "yes" if t["in_model"] else "<b>no</b>"] for t in tags]
    head = ["tag", "category", "support", "train count", "predicted", "precision", "recall", "F1", "AP", "threshold", "in model"]
    table = _table(head, rows, left=2)
    if len(rows) > 60:
        return f"<details><summary>all {len(rows)} tags (sorted by support)</summary>{table}</details>"
    return table


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
    return rows


def _model_section(res: dict[str, Any]) -> str:
    v, d = res["vocabulary"], res["dataset"]
    parts = [f"<p>Model <b>{html.escape(res['model']['name'])}</b> ({html.escape(res['model']['path'])}; on {html.escape(res['model']['device'])}); "
             f"thresholds: {html.escape(res['thresholds']['source'])}. "
             f"{d['images']} images evaluated, {d['images_failed']} unreadable; {_f(d['images_per_second'], 1)} images/s.</p>",
             f"<p>Vocabulary, matched by tag name: {v['evaluated_tags']} of the dataset's {v['dataset_tags']} tags are in the model "
             f"({v['tags_with_positives']} have positives in this split); <b>{v['dataset_tags_not_in_model']}</b> dataset tags are not "
             f"in the model and count as never predicted; {v['model_tags_not_in_dataset']} model tags are not in the dataset and are "
             f"ignored; {v['labels_outside_dataset_vocabulary']} labels in the split were outside the dataset vocabulary (ignored).</p>"]
    if v["dataset_tags_not_in_model_list"]:
        parts.append("<details><summary>dataset tags missing from the model</summary><p>"
                     + ", ".join(html.escape(t) for t in v["dataset_tags_not_in_model_list"]) + "</p></details>")
    return "".join(parts)


def _category_table(res: dict[str, Any]) -> str:
    rows = []
    for cat, c in res["categories"].items():
        rows.append([cat, c["tags"], c["tags_in_model"], c["tags_with_support"], c["positives"], c["micro_precision"], c["micro_recall"],
                     c["micro_f1"], c["macro_f1"], c["map"], c["micro_f1_at_pr"]["f1"] if c["micro_f1_at_pr"] else None,
                     c["macro_f1_at_pr"]["f1"] if c["macro_f1_at_pr"] else None])
    return _table(["category", "tags", "in model", "with positives", "positives", "micro P", "micro R", "micro F1",
                   "macro F1", "mAP", "micro F1 @P=R", "macro F1 @P=R"], rows)


def _strategy_table(res: dict[str, Any]) -> str:
    rows = [[s["name"], s["micro_precision"], s["micro_recall"], s["micro_f1"], s["macro_precision"], s["macro_recall"],
             s["macro_f1"], s["example_jaccard"], s["tags_per_image"], f'<span style="color:#666">{html.escape(s["description"])}</span>']
            for s in res["strategies"]]
    return _table(["thresholds", "micro P", "micro R", "micro F1", "macro P", "macro R", "macro F1", "Jaccard", "tags/image", "how"], rows)


def _rating(res: dict[str, Any]) -> str:
    r = res["rating"]
    if not r:
        return "<p>The split has no rating labels.</p>"
    names = list(r["confusion"])
    rows = [[t] + [r["confusion"][t][p] for p in names] for t in names]
    return (f"<p>Accuracy {_f(r['accuracy'])} on {r['images_judged']} images ({r['labels_model_cannot_output']} labelled "
            f"with a rating the model cannot output). Rows: true, columns: predicted.</p>" + _table(["true \\ predicted"] + names, rows))


def _compare_section(a: Summary, b: Summary, la: str, lb: str) -> str:
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
    drow = [[n, fa[n]["support"], fa[n]["f1"], fb[n]["f1"], _delta(fa[n]["f1"], fb[n]["f1"])] for _, n in better + worse]
    return ("<h2>Side by side</h2>" + _table(["metric", la, lb, f"{lb} − {la}"], rows)
            + '<div class="plots">' + _img(plots.pr_curves([a, b], [la, lb]), "PR curves")
            + _img(plots.compare_tags(a, b, la, lb), "per-tag F1") + "</div>"
            + "<h3>Tags that differ most</h3>" + _table(["tag", "support", f"F1 {la}", f"F1 {lb}", "difference"], drow))


def _delta(va, vb) -> str:
    if va is None or vb is None:
        return "–"
    d = vb - va
    cls = "better" if d > 0 else "worse" if d < 0 else ""
    return f'<span class="{cls}">{d:+.3f}</span>'


def render_html(s: Summary, other: Summary | None = None, *, examples: int = 12, labels: tuple[str, str] | None = None) -> str:
    res = s.result
    la = labels[0] if labels else res["model"]["name"]
    lb = labels[1] if labels else (other.result["model"]["name"] if other else "")
    if other is not None and lb == la:
        la, lb = f"A: {la}", f"B: {lb}"
    title = f"Evaluation of {la}" + (f" vs {lb}" if other else "") + f" on {Path(res['dataset']['path']).name}/{res['dataset']['split']}"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>",
           f"<p class='sub'>{res['dataset']['images']} images · {res['vocabulary']['evaluated_tags']} tags evaluated · "
           f"thresholds: {html.escape(res['thresholds']['source'])}</p>"]
    warnings = list(res["warnings"])
    if other is not None:
        warnings += [f"{lb}: {w}" for w in other.result["warnings"] if w not in res["warnings"]]
    for w in warnings:
        out.append(f'<div class="warn">⚠ {html.escape(w)}</div>')
    out.append(_cards(res))
    if other is not None:
        out.append(_compare_section(s, other, la, lb))
    plots_ok = plots._plt() is not None
    out.append(f"<h2>{html.escape(la)}: how well it tags</h2>" + _model_section(res))
    out.append(_table(["metric", "value"], _headline_rows(res)))
    if plots_ok:
        out.append('<div class="plots">' + _img(plots.pr_curves([s], [la]), "precision-recall")
                   + _img(plots.f1_vs_threshold(s), "F1 against threshold") + _img(plots.f1_vs_frequency(s), "F1 against frequency")
                   + "</div>")
        out.append('<div class="plots wide">' + _img(plots.best_worst(s), "best and worst tags") + "</div>")
    else:
        out.append("<p><i>matplotlib is not installed: plots left out (pip install 'animetagnet[data]').</i></p>")
    out.append("<h2>Threshold strategies on this split</h2>" + _strategy_table(res))
    out.append("<h2>By category</h2>" + _category_table(res))
    out.append("<h2>Rating</h2>" + _rating(res))
    out.append("<h2>Examples: true vs predicted tags</h2>" + _examples([s] + ([other] if other else []), [la, lb] if other else [la], examples))
    out.append("<h2>Every tag</h2>" + _tags_table(res))
    out.append("<h2>Definitions</h2><dl class='defs'>" + "".join(
        f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in res["definitions"].items()) + "</dl>")
    out.append("</body></html>")
    return "\n".join(out)


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
