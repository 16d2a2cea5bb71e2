"""`review-report`: how good the model's suggestions were, as the reviewer judged them, and thresholds re-calibrated from it.

The judged images are those the reviewer acted on one by one (an applied edit, accept,
reject or confirm; bulk edits and reloads do not count: they are not a look at the image).
On them, the final caption is the truth and the model's selection (its scores against its
thresholds) the prediction: per-tag precision and recall, the reviewer's explicit verdicts
(accepted / rejected suggestions), and micro/macro figures. The thresholds are then
re-calibrated on those judgements by `evaluation.calibration.calibrate` (the same picker as
`export` and `evaluate --calibrate`) and written with `calibration.write_metadata` into a
copy of the model directory (or into the model itself with `in_place`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UsageError
from ...evaluation import calibration
from ...evaluation.metrics import per_tag_average_precision, prf
from ...vocab import Category
from .session import ReviewSession

PER_ITEM_OPS = ("add", "remove", "move", "set", "accept", "reject", "confirm")


def judged_items(session: ReviewSession) -> list[int]:
    marks = ",".join("?" * len(PER_ITEM_OPS))
    rows = session.con.execute(
        f"SELECT DISTINCT e.item_id FROM edits e JOIN batches b ON b.id = e.batch "
        f"WHERE b.state = 'applied' AND e.op IN ({marks}) ORDER BY e.item_id", PER_ITEM_OPS).fetchall()
    return [r[0] for r in rows if r[0] in session.items]


def verdict_counts(session: ReviewSession, ids: list[int]) -> dict[str, dict[str, int]]:
    """tag -> {accepted, rejected}: the latest applied verdict per (image, tag)."""
    latest: dict[tuple[int, str], str] = {}
    for r in session.con.execute("SELECT e.item_id, e.verdict_tag, e.verdict FROM edits e JOIN batches b ON b.id = e.batch "
                                 "WHERE b.state = 'applied' AND e.verdict IS NOT NULL ORDER BY e.id"):
        latest[(r[0], r[1])] = r[2]
    wanted = set(ids)
    out: dict[str, dict[str, int]] = {}
    for (item, tag), v in latest.items():
        if item in wanted:
            d = out.setdefault(tag, {"accepted": 0, "rejected": 0})
            d["accepted" if v == "accept" else "rejected"] += 1
    return out


def build_report(session: ReviewSession, *, min_support: int = calibration.DEFAULT_MIN_SUPPORT) -> dict[str, Any]:
    """The report dict; `presets` holds the re-calibrated thresholds (empty when nothing was judged)."""
    if session.tagger is None:
        raise UsageError("review-report needs the model that made the suggestions (--model)")
    ids = judged_items(session)
    if not ids:
        raise UsageError(f"{session.root}: no image was reviewed yet (no per-image edit, accept, reject or confirm "
                         "in the journal)")
    session.compute_suggestions(ids)  # the model may differ from the one the server ran
    items = [session.items[i] for i in ids if session.items[i].image_sha1 in session.scores]
    names = session.vocab_names
    index = session.vocab_index
    V = len(names)
    y = np.zeros((len(items), V), dtype=bool)
    s = np.zeros((len(items), V), dtype=np.float32)
    unknown: dict[str, int] = {}
    for r, it in enumerate(items):
        for k in set(it.keys):
            j = index.get(k)
            if j is None:
                unknown[k] = unknown.get(k, 0) + 1
            else:
                y[r, j] = True
        for j, p in session.scores[it.image_sha1][1].items():
            s[r, j] = p
    rating = np.array(sorted(session.rating_idx), dtype=np.int64)
    covered = np.ones(V, dtype=bool)
    covered[rating] = False
    pred = s >= session.thresholds[None, :]
    pred[:, ~covered] = False
    tp = (y & pred).sum(0)
    fp = (~y & pred).sum(0)
    fn = (y & ~pred).sum(0)
    precision, recall, f1 = prf(tp, fp, fn)
    ap = per_tag_average_precision(y, s, covered)
    verdicts = verdict_counts(session, ids)
    cats = np.array([int(t.category) for t in session.tagger.vocab])
    presets = calibration.calibrate(y[:, covered], s[:, covered], [n for n, c in zip(names, covered) if c],
                                    cats[covered], np.ones(int(covered.sum()), dtype=bool), min_support=min_support)
    balanced = presets.get("balanced", {"categories": {}, "tags": {}})
    per_tag = []
    for j in np.flatnonzero(covered & ((tp + fp + fn) > 0)):
        name = names[j]
        label = Category(int(cats[j])).label
        new_t = balanced["tags"].get(name, balanced["categories"].get(label))
        per_tag.append({"tag": name, "category": label, "support": int(tp[j] + fn[j]), "suggested": int(tp[j] + fp[j]),
                        "tp": int(tp[j]), "fp": int(fp[j]), "fn": int(fn[j]),
                        "precision": round(float(precision[j]), 4), "recall": round(float(recall[j]), 4),
                        "f1": round(float(f1[j]), 4), "ap": None if np.isnan(ap[j]) else round(float(ap[j]), 4),
                        "accepted": verdicts.get(name, {}).get("accepted", 0),
                        "rejected": verdicts.get(name, {}).get("rejected", 0),
                        "threshold": round(float(session.thresholds[j]), 4),
                        "recalibrated": None if new_t is None else round(float(new_t), 4)})
    per_tag.sort(key=lambda d: (-d["support"], d["tag"]))
    mtp, mfp, mfn = int(tp[covered].sum()), int(fp[covered].sum()), int(fn[covered].sum())
    mp, mr, mf = prf(mtp, mfp, mfn)
    supported = covered & ((tp + fn) > 0)
    return {
        "folder": str(session.root), "model": session.tagger.bundle.name, "judged_images": len(items),
        "micro": {"precision": round(float(mp), 4), "recall": round(float(mr), 4), "f1": round(float(mf), 4),
                  "tp": mtp, "fp": mfp, "fn": mfn},
        "macro": {"precision": round(float(precision[supported].mean()), 4) if supported.any() else None,
                  "recall": round(float(recall[supported].mean()), 4) if supported.any() else None,
                  "f1": round(float(f1[supported].mean()), 4) if supported.any() else None,
                  "tags": int(supported.sum())},
        "verdicts": {"accepted": sum(v["accepted"] for v in verdicts.values()),
                     "rejected": sum(v["rejected"] for v in verdicts.values())},
        "tags_not_in_model": dict(sorted(unknown.items(), key=lambda kv: -kv[1])),
        "per_tag": per_tag,
        "presets": presets,
        "min_support": min_support,
    }


def write_model(report: dict[str, Any], model_dir: Path, out_dir: Path | None, *, in_place: bool = False,
                default: str = calibration.DEFAULT_PRESET) -> Path:
    """Write the re-calibrated presets into animetagnet.json of a copy of the model (or of the model itself)."""
    if in_place:
        target = model_dir
    else:
        if out_dir is None:
            raise UsageError("pass --out DIR for the re-calibrated copy of the model (or --in-place)")
        if out_dir.resolve() == model_dir.resolve():
            raise UsageError("--out is the model directory itself; pass --in-place to overwrite its thresholds")
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UsageError(f"{out_dir} exists and is not empty")
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
        target = out_dir
    meta_path = target / "animetagnet.json"
    data: dict[str, Any] = {"format_version": 1}
    if meta_path.is_file():
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    info = {"source": "review", "folder": report["folder"], "judged_images": report["judged_images"],
            "min_support": report["min_support"]}
    data["thresholds"] = calibration.thresholds_entry(report["presets"], default=default, info=info,
                                                      existing=data.get("thresholds"))
    return calibration.write_metadata(target, data)


def format_table(report: dict[str, Any], top: int = 30) -> str:
    lines = [f"{report['judged_images']} judged image(s); suggestions: micro P {report['micro']['precision']:.3f} "
             f"R {report['micro']['recall']:.3f} F1 {report['micro']['f1']:.3f}; macro F1 "
             f"{report['macro']['f1'] if report['macro']['f1'] is not None else '-'} over {report['macro']['tags']} tags; "
             f"{report['verdicts']['accepted']} accepted, {report['verdicts']['rejected']} rejected",
             f"{'tag':<32} {'supp':>5} {'sugg':>5} {'prec':>6} {'rec':>6} {'acc':>4} {'rej':>4} {'thr':>6} {'new':>6}"]
    for d in report["per_tag"][:top]:
        new = "-" if d["recalibrated"] is None else f"{d['recalibrated']:.3f}"
        lines.append(f"{d['tag'][:32]:<32} {d['support']:>5} {d['suggested']:>5} {d['precision']:>6.3f} "
                     f"{d['recall']:>6.3f} {d['accepted']:>4} {d['rejected']:>4} {d['threshold']:>6.3f} {new:>6}")
    if report["tags_not_in_model"]:
        extra = ", ".join(f"{k} ({v})" for k, v in list(report["tags_not_in_model"].items())[:10])
        lines.append(f"tags the reviewer used that the model lacks (fine-tune with train --init-from to add them): {extra}")
    return "\n".join(lines)
