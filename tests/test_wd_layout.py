"""The WD v3 label layout on the reading side: old files still load, misordered files warn once and
still work by category, untrained ratings are never shown, models with an embedding output load,
and `--sort model` writes label-file order."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest

from animetagnet import Tagger
from animetagnet.bundle import ModelBundle
from animetagnet.formatting import CaptionStyle
from animetagnet.results import TagResult
from animetagnet.vocab import RATING_NAMES, Vocabulary, wd_layout_problems
from cli_helpers import run_cli
from modelfactory import CHARACTERS, GENERAL, build_wd_model, wd_labels

UNTRAINED = {"labels": {"layout": "wd-v3", "ratings": "untrained"}}


def _layout_warnings(caplog):
    return [r for r in caplog.records if "not the WD v3 layout" in r.getMessage()]


def test_real_wd_v3_label_file_is_the_layout(shared_data):
    v3 = Vocabulary.read_csv(shared_data / "tags" / "wd_v3_selected_tags.csv")
    assert wd_layout_problems(v3) == []
    # The 2021 files have no rating rows and mix categories by count: positional readers misname
    # them, so loading one warns (our own code reads the category column either way).
    old = Vocabulary.read_csv(shared_data / "tags" / "wd_2021_selected_tags_5500.csv")
    problems = wd_layout_problems(old, require_ratings=False)
    assert "(general) comes after" in problems[0] and "(copyright)" in problems[0]
    assert wd_layout_problems(old)[0].startswith("row 0 ")


def test_old_label_file_without_rating_rows_still_works(tmp_path, real_images, caplog):
    d = build_wd_model(tmp_path / "old", labels=wd_labels(ratings=[]))
    with caplog.at_level(logging.WARNING):
        r = Tagger(d).tag(real_images[0], None)
    assert r.rating is None and r.ratings == {}
    assert set(r.general) <= set(GENERAL) and set(r.character) <= set(CHARACTERS)
    assert not _layout_warnings(caplog)  # pre-v3 files are not misread by anyone: no warning


def test_misordered_label_file_warns_once_and_selects_by_category(tmp_path, real_images, caplog):
    labels = wd_labels()
    shuffled = labels[11:] + labels[4:11] + labels[:4]  # characters, general, ratings last
    d = build_wd_model(tmp_path / "m", labels=shuffled)
    with caplog.at_level(logging.WARNING):
        first = Tagger(d).tag(real_images[0])
        ModelBundle.load(d)
    warned = _layout_warnings(caplog)
    assert len(warned) == 1
    assert "row 0 'hatsune_miku' (character) should be the rating 'general'" in warned[0].getMessage()
    # By category, never by position: the same probabilities give the same tags as the WD-ordered file.
    assert set(first.ratings) == set(RATING_NAMES) and first.rating in RATING_NAMES
    assert set(first.general) <= set(GENERAL) and set(first.character) <= set(CHARACTERS)


def test_untrained_ratings_are_never_shown(tmp_path, real_images):
    d = build_wd_model(tmp_path / "m", metadata=UNTRAINED)
    r = Tagger(d).tag(real_images[0])
    assert r.rating is None and r.ratings == {}
    proc = run_cli("tag", str(real_images[0]), "--model", str(d), "-f", "jsonl", "-q")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rating"] is None and out["ratings"] == {}
    caption = run_cli("tag", str(real_images[0]), "--model", str(d), "-f", "table", "-q", "--include-rating").stdout
    assert "rating     -" in caption
    # The same model without the marker shows its rating.
    trained = build_wd_model(tmp_path / "t")
    assert json.loads(run_cli("tag", str(real_images[0]), "--model", str(trained), "-f", "jsonl", "-q").stdout)["rating"]


def test_service_shows_no_rating_for_untrained_ratings(tmp_path, real_images):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from animetagnet.serve.app import create_app

    d = build_wd_model(tmp_path / "m", metadata=UNTRAINED)
    with TestClient(create_app(Tagger(d), max_wait_ms=2), base_url="http://localhost") as c:
        resp = c.post("/v1/tag?include_rating=true&general_threshold=0",
                      files=[("files", ("a.jpg", real_images[0].read_bytes(), "image/jpeg"))])
    assert resp.status_code == 200, resp.text
    res = resp.json()["results"][0]
    assert res["rating"] is None and not res["ratings"]
    assert not any(r in res["caption"].split(", ") for r in RATING_NAMES)


def test_models_with_an_embedding_output_load_and_tag_the_same(tmp_path, real_images):
    one = Tagger(build_wd_model(tmp_path / "one", seed=4))
    two = Tagger(build_wd_model(tmp_path / "two", seed=4, embedding=True))
    assert one.predictor.embedding_name is None and two.predictor.embedding_name == "embedding"
    batch = np.stack([one.prepare(p) for p in real_images[:3]])
    assert np.array_equal(one.predict(batch), two.predict(batch))
    assert two.predict(batch).shape == (3, len(wd_labels()))


def test_sort_model_follows_the_label_file():
    names = [n for n, _ in wd_labels()]
    style = CaptionStyle(sort="model", characters_first=False)
    style.use_label_order(names)
    r = TagResult(tags={"general": {"smile": 0.9, "1girl": 0.5, "solo": 0.99}, "character": {"hatsune_miku": 0.95}})
    assert style.caption(r) == "1girl, smile, solo, hatsune_miku"  # label rows 4, 7, 10, 11
    style = CaptionStyle(sort="model").use_label_order(names)
    assert style.caption(r) == "hatsune_miku, 1girl, smile, solo"


def test_sort_model_on_the_command_line(tmp_path, real_images, tiny_model):
    proc = run_cli("tag", str(real_images[0]), "--model", str(tiny_model), "-f", "csv", "-q", "--sort", "model",
                   "--general-threshold", "0", "--character-threshold", "0")
    assert proc.returncode == 0, proc.stderr
    row = list(csv.reader(proc.stdout.splitlines()))[1]
    tags = row[4].split(", ")  # the general column
    assert tags == [n for n, c in wd_labels() if c == 0]  # threshold 0: every general tag, in label order
