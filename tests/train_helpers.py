"""Tiny datasets for training tests: synthetic (always available) and real faces (needs ../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from animetagnet.vocab import RATING_NAMES, Category, Tag, Vocabulary

ROOT = Path(__file__).resolve().parents[1]


from cli_helpers import data_dir as data_root  # noqa: E402,F401 - one place decides where the data lives


#: Colour-coded synthetic tags: learnable in a few steps, and hermetic.
SYN_TAGS = [("red_thing", 0, (220, 30, 30)), ("blue_thing", 0, (30, 30, 220)), ("green_thing", 4, (30, 200, 30))]


def make_synthetic(out: Path, n_train: int = 24, n_val: int = 12, n_test: int = 6, extra_tag: bool = False,
                   seed: int = 0, ratings: bool = False) -> Path:
    """Images with 1-2 coloured blobs on white; tags = the colours present. Varied sizes and modes.

    `ratings`: a WD-layout label file (four rating rows first) and a rating label per image
    (`explicit` when red is present, else `general`); without it, the pre-WD layout (no rating rows).
    """
    rng = np.random.default_rng(seed)
    tags = list(SYN_TAGS) + ([("yellow_thing", 4, (230, 220, 20))] if extra_tag else [])
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = ([(r, 9, None) for r in RATING_NAMES] if ratings else []) + tags
    counts = {t[0]: 0 for t in rows}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        lines = []
        for i in range(n):
            w, h = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            arr = np.full((h, w, 3), 255, np.uint8)
            present = sorted(set(rng.choice(len(tags), size=int(rng.integers(1, 3))).tolist()))
            for k in present:
                y, x = int(rng.integers(0, h - 16)), int(rng.integers(0, w - 16))
                arr[y : y + 16, x : x + 16] = tags[k][2]
            name = f"{split}_{i}.png" if i % 2 else f"{split}_{i}.jpg"
            Image.fromarray(arr).save(img_dir / name)
            names = [tags[k][0] for k in present]
            if ratings:
                names.insert(0, "explicit" if "red_thing" in names else "general")
            if split == "train":
                for t in names:
                    counts[t] += 1
            lines.append(json.dumps({"id": f"{split}{i}", "image": f"images/{name}", "tags": names}))
        (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    Vocabulary(Tag(n, Category(c), counts[n], i) for i, (n, c, _) in enumerate(rows)).write_csv(out / "selected_tags.csv")
    (out / "dataset.json").write_text(json.dumps({"source": "synthetic"}), encoding="utf-8")
    return out
