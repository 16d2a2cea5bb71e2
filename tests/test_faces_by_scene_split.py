"""tools/faces_by_scene_split.py: faces laid out by make_scenes.py's own split, kept by prepare."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

from train_helpers import ROOT

TOOL = ROOT / "tools" / "faces_by_scene_split.py"


def _make_scenes(shared_data: Path):
    spec = importlib.util.spec_from_file_location("make_scenes_for_test", shared_data.parent / "tools" / "make_scenes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_face_lands_in_make_scenes_split_and_prepare_keeps_it(shared_data, tmp_path):
    from animetagnet.datasets.prepare import PrepareOptions, prepare_dataset

    faces = tmp_path / "faces"
    for tag in ("gawr_gura", "ninomae_ina'nis"):  # a quote in a real tag name
        (faces / tag).mkdir(parents=True)
        for f in sorted((shared_data / "faces" / tag).glob("*.jpg"))[:40]:
            shutil.copyfile(f, faces / tag / f.name)
    out = tmp_path / "by-split"
    leftover = tmp_path / "by-split.partial" / "train" / "gawr_gura"  # what an interrupted run leaves
    leftover.mkdir(parents=True)
    (leftover / "half.jpg").write_bytes(b"\xff\xd8")
    run = subprocess.run([sys.executable, str(TOOL), str(faces), str(out),
                          "--make-scenes", str(shared_data.parent / "tools" / "make_scenes.py")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    counts = json.loads(run.stdout)
    assert sum(counts.values()) == 80 and counts["train"] > counts["val"] + counts["test"]
    assert not (tmp_path / "by-split.partial").exists() and len(list(out.rglob("*.jpg"))) == 80

    split_of = _make_scenes(shared_data).split_of
    for path in out.rglob("*.jpg"):
        split, tag = path.relative_to(out).parts[:2]
        assert split == split_of(path.name.split("-")[0])
        assert (faces / tag / path.name).read_bytes() == path.read_bytes()

    ds = tmp_path / "ds"
    info = prepare_dataset(PrepareOptions(source=str(out), out=str(ds), plot=False))
    assert info["split"]["mode"] == "predefined"
    for split in ("train", "val", "test"):
        rows = [json.loads(l) for l in (ds / f"{split}.jsonl").read_text().splitlines()] if (ds / f"{split}.jsonl").exists() else []
        for row in rows:  # no record moved between splits
            assert split_of(Path(row["image"]).name.split("-")[0]) == split, row


def test_refuses_a_folder_that_is_not_empty_and_a_missing_make_scenes(shared_data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    run = subprocess.run([sys.executable, str(TOOL), str(shared_data / "faces"), str(out)], capture_output=True, text=True)
    assert run.returncode == 2 and "not empty" in run.stderr and "Traceback" not in run.stderr
    assert (out / "keep.txt").read_text() == "mine"
    run = subprocess.run([sys.executable, str(TOOL), str(shared_data / "faces"), str(tmp_path / "new"),
                          "--make-scenes", str(tmp_path / "nope.py")], capture_output=True, text=True)
    assert run.returncode == 2 and "make_scenes.py not found" in run.stderr
