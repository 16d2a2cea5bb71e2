"""The HTML report is rendered with autoescape: real Danbooru tag names that look like markup stay text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("jinja2")

from animetagnet.cli import main  # noqa: E402
from modelfactory import GENERAL, build_wd_model, wd_labels  # noqa: E402

#: Real kaomoji tags of the Danbooru vocabulary (both are in WD v3's selected_tags.csv).
KAOMOJI = ["<o>_<o>", "<|>_<|>"]


def _dataset(root, tags):
    rng = np.random.default_rng(3)
    (root / "images").mkdir(parents=True)
    lines = ["tag_id,name,category,count"] + [f'{i},"{t}",0,{20 - i}' for i, t in enumerate(tags)]
    (root / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    recs = []
    for i in range(10):
        p = root / "images" / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((40, 32)).save(p)
        recs.append({"id": f"img{i}", "image": str(p), "tags": [t for t in tags if rng.random() < 0.6] or [tags[0]]})
    (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def test_kaomoji_tags_are_escaped_everywhere(tmp_path):
    # One kaomoji the model knows (scored, in the tag table and chips), one it lacks (the missing list).
    ds = _dataset(tmp_path / "ds", ["smile", *KAOMOJI])
    model = build_wd_model(tmp_path / "model", labels=wd_labels(general=[*GENERAL, KAOMOJI[0]]), seed=2)
    other = build_wd_model(tmp_path / "other", labels=wd_labels(general=[*GENERAL, KAOMOJI[0]]), seed=3)
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "--split", "val", "-q", "--examples", "6",
               "--general-threshold", "0.01", "--compare", str(other), "--report", str(tmp_path / "r")])
    assert rc == 0
    html = (tmp_path / "r" / "report.html").read_text()
    assert "&lt;o&gt;_&lt;o&gt;" in html and "&lt;|&gt;_&lt;|&gt;" in html
    for raw in (*KAOMOJI, "<o>", "<|>"):
        assert raw not in html, raw
    # Still a self-contained page: nothing fetched from elsewhere.
    assert "http://" not in html and "https://" not in html and "<link" not in html and "<script" not in html
