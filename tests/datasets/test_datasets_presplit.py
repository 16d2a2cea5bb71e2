"""`prepare` on sources that come split (train/ val|validation/ test/ folders), on real face crops."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from animetagnet.datasets.curation import CurationRules
from animetagnet.datasets.prepare import PrepareOptions, prepare_dataset
from animetagnet.datasets.sources import split_folders
from animetagnet.datasets.splits import split_of
from animetagnet.errors import UsageError

from ds_helpers import run_cli

pytestmark = pytest.mark.realdata
SPLITS = ("train", "val", "test")
RULES = dict(min_count={"*": 1})  # a few images per tag: every tag in the vocabulary


def _faces(data_dir: Path, tag: str, n: int, skip: int = 0) -> list[Path]:
    return sorted((data_dir / "faces" / tag).glob("*.jpg"))[skip : skip + n]


def _records(ds: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(l) for l in (ds / f"{s}.jsonl").read_text().splitlines()] for s in SPLITS}


@pytest.fixture(scope="module")
def presplit(data_dir: Path, tmp_path_factory) -> dict:
    """A kohya caption tree split into train/ val/ test/, from real faces, with the awkward cases:
    the same file name in every folder (different images), one image (same bytes) in train and
    test and val, an empty caption (a valid no-tag image), an image without a caption file."""
    root = tmp_path_factory.mktemp("presplit") / "src"
    tags = ["gawr_gura", "mori_calliope", "ninomae_ina'nis"]
    plan = {"train": 14, "val": 6, "test": 6}
    expect: dict[str, set] = {s: set() for s in SPLITS}
    offset = 0
    for split, n in plan.items():
        d = root / split
        d.mkdir(parents=True)
        for i in range(n):
            tag = tags[i % len(tags)]
            src = _faces(data_dir, tag, 1, skip=offset + i)[0]
            shutil.copyfile(src, d / f"{i:04d}.jpg")
            (d / f"{i:04d}.txt").write_text(tag.replace("_", " ") + "\n", encoding="utf-8")
            expect[split].add(f"{split}/{i:04d}")
        offset += n
    dup = _faces(data_dir, "gawr_gura", 1, skip=40)[0]
    for split in SPLITS:  # the same bytes in all three folders, under other names
        shutil.copyfile(dup, root / split / "dup.jpg")
        (root / split / "dup.txt").write_text("gawr_gura" if split == "train" else "mori_calliope", encoding="utf-8")
    expect["train"].add("train/dup")
    shutil.copyfile(_faces(data_dir, "mori_calliope", 1, skip=41)[0], root / "val" / "nobody.jpg")
    (root / "val" / "nobody.txt").write_text("", encoding="utf-8")  # empty caption: a valid no-tag image
    expect["val"].add("val/nobody")
    shutil.copyfile(_faces(data_dir, "mori_calliope", 1, skip=42)[0], root / "test" / "uncaptioned.jpg")
    (root / "notes.json").write_text("{}")  # a file beside the split folders is not a split
    out = root.parent / "ds"
    info = prepare_dataset(PrepareOptions(source=str(root), out=str(out), plot=False, workers=2, rules=CurationRules(**RULES)))
    return {"root": root, "out": out, "info": info, "expect": expect}


def test_every_record_stays_in_its_folder_split(presplit):
    recs = _records(presplit["out"])
    for split in SPLITS:
        assert {r["id"] for r in recs[split]} == presplit["expect"][split]
        assert all(r["image"].startswith(str(presplit["root"] / split) + "/") for r in recs[split])
    ids = [r["id"] for s in SPLITS for r in recs[s]]
    assert len(ids) == len(set(ids))  # 0000 exists in all three folders: ids stay distinct
    info = json.loads((presplit["out"] / "dataset.json").read_text())
    assert info["split"]["mode"] == "predefined"
    assert info["split"]["folders"] == {"train": "train", "val": "val", "test": "test"}
    assert info["counts"]["images"] == {s: len(presplit["expect"][s]) for s in SPLITS}
    stats = json.loads((presplit["out"] / "stats.json").read_text())
    assert stats["split_mode"] == "predefined"
    assert "predefined by the source's folders" in (presplit["out"] / "report.md").read_text()


def test_the_same_image_in_two_folders_is_kept_in_train_only(presplit):
    recs = _records(presplit["out"])
    assert "val/dup" not in {r["id"] for r in recs["val"]} and "test/dup" not in {r["id"] for r in recs["test"]}
    (dup,) = [r for r in recs["train"] if r["id"] == "train/dup"]
    assert set(dup["tags"]) == {"gawr_gura", "mori_calliope"}  # tags of the copies merged into the kept one
    skipped = presplit["info"]["counts"]["skipped"]
    reasons = [k for k in skipped if k.startswith("same image in two split folders")]
    assert sorted(reasons) == ["same image in two split folders (kept in train, the test copy dropped; tags merged)",
                               "same image in two split folders (kept in train, the val copy dropped; tags merged)"]


def test_empty_caption_is_a_no_tag_image_and_a_missing_one_is_reported(presplit):
    recs = _records(presplit["out"])
    (nobody,) = [r for r in recs["val"] if r["id"] == "val/nobody"]
    assert nobody["tags"] == []
    skipped = presplit["info"]["counts"]["skipped"]
    assert skipped["image without a caption file"] == {"count": 1, "examples": ["test/uncaptioned.jpg"]}
    assert skipped["empty caption (kept: an image with no tags)"]["examples"] == ["val/nobody.jpg"]
    assert "test/uncaptioned" not in {r["id"] for s in SPLITS for r in recs[s]}


def test_rerun_is_byte_identical(presplit, tmp_path):
    again = tmp_path / "again"
    prepare_dataset(PrepareOptions(source=str(presplit["root"]), out=str(again), plot=False, workers=1, rules=CurationRules(**RULES)))
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "selected_tags.csv", "dataset.json", "stats.json", "report.md"):
        assert (again / name).read_bytes() == (presplit["out"] / name).read_bytes(), name


def test_resplit_hashes_and_split_needs_resplit(presplit, tmp_path):
    out = tmp_path / "hashed"
    prepare_dataset(PrepareOptions(source=str(presplit["root"]), out=str(out), plot=False, resplit=True))
    info = json.loads((out / "dataset.json").read_text())
    assert info["split"]["mode"] == "hash" and "ratios" in info["split"]
    recs = _records(out)
    for split in SPLITS:
        assert all(split_of(r["group"]) == split for r in recs[split])
    # Hashing moves some records out of their folder's split: the predefined mode is what keeps them.
    moved = [r["id"] for s in SPLITS for r in recs[s] if not r["id"].startswith(s + "/")]
    assert moved
    res = run_cli("prepare", str(presplit["root"]), "--out", str(tmp_path / "x"), "--split", "70/15/15")
    assert res.returncode == 2
    assert "--split applies only with --resplit" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("prepare", str(presplit["root"]), "--out", str(tmp_path / "y"), "--split", "70/15/15", "--resplit", "-q")
    assert res.returncode == 0, res.stderr


def test_folder_per_class_below_split_folders_and_validation_alias(data_dir, tmp_path):
    root = tmp_path / "src"
    for split, skip in (("train", 0), ("validation", 12)):
        for tag in ("gawr_gura", "mori_calliope"):
            d = root / split / tag
            d.mkdir(parents=True)
            for p in _faces(data_dir, tag, 12 if split == "train" else 3, skip=skip):
                shutil.copyfile(p, d / p.name)
    info = prepare_dataset(PrepareOptions(source=str(root), out=str(tmp_path / "ds"), plot=False, rules=CurationRules(**RULES)))
    assert info["split"] == {**info["split"], "mode": "predefined", "folders": {"train": "train", "val": "validation"}}
    recs = _records(tmp_path / "ds")
    assert len(recs["train"]) == 24 and len(recs["val"]) == 6 and recs["test"] == []
    assert all(r["id"].startswith("validation/") for r in recs["val"])
    assert {t for r in recs["val"] for t in r["tags"]} == {"gawr_gura", "mori_calliope"}
    (root / "val").mkdir()
    with pytest.raises(UsageError, match="keep one validation folder"):
        split_folders(root)


def test_split_folder_names_among_other_folders_are_not_splits(tmp_path):
    for name in ("train", "test", "gawr_gura"):  # a class that happens to be called train
        (tmp_path / "a" / name).mkdir(parents=True)
    assert split_folders(tmp_path / "a") is None
    (tmp_path / "b" / "train").mkdir(parents=True)
    assert split_folders(tmp_path / "b") is None  # train alone: nothing to keep apart
    (tmp_path / "b" / "test").mkdir()
    assert split_folders(tmp_path / "b") == {"train": "train", "test": "test"}
