"""--resume compares real folders: a path's spelling (absolute, relative, through a symlink) never tags an image twice."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from animetagnet.inputs import resume_key
from cli_helpers import run_cli


@pytest.fixture()
def tree(tmp_path, real_images):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in real_images[:4]:
        shutil.copy(p, imgs / p.name)
    os.symlink("imgs", tmp_path / "alias")  # the same folder under another name
    return tmp_path, imgs


def test_resume_key(tree, monkeypatch):
    base, imgs = tree
    monkeypatch.chdir(base)
    a = resume_key(str(imgs / "x.jpg"))
    assert a == resume_key("imgs/x.jpg") == resume_key("./imgs/../imgs/x.jpg") == resume_key("alias/x.jpg")
    monkeypatch.chdir(imgs)
    assert resume_key("x.jpg") == a
    os.symlink("x.jpg", imgs / "y.jpg")
    assert resume_key("y.jpg") != a  # two names of one file are two inputs, two records
    assert resume_key("s3://bucket/imgs/x.jpg") == "s3://bucket/imgs/x.jpg"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_absolute_then_relative_then_alias(tree, tiny_model, fmt):
    base, imgs = tree
    out = base / f"r.{fmt}"
    first = run_cli("tag", str(imgs), "--model", str(tiny_model), "-f", fmt, "-o", str(out), "-q")
    assert first.returncode == 0, first.stderr
    before = out.read_text()
    for spelling, cwd in (("imgs", base), (".", imgs), ("alias", base), (str(base / "alias"), imgs)):
        proc = run_cli("tag", spelling, "--model", str(tiny_model), "-f", fmt, "-o", str(out), "--resume", cwd=cwd)
        assert proc.returncode == 0 and "0 images to tag, 4 already done" in proc.stderr, (spelling, proc.stderr)
        assert out.read_text() == before


def test_old_files_with_relative_paths_still_resume(tree, tiny_model):
    base, imgs = tree
    out = base / "r.jsonl"
    run_cli("tag", "imgs", "--model", str(tiny_model), "-f", "jsonl", "-o", str(out), "-q", cwd=base)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["path"].startswith("imgs/") for r in recs)  # as typed: what older versions wrote too
    out.write_text("".join(json.dumps(r) + "\n" for r in recs[:2]))  # an interrupted older run
    proc = run_cli("tag", str(imgs), "--model", str(tiny_model), "-f", "jsonl", "-o", str(out), "--resume", cwd=base)
    assert "2 images to tag, 2 already done" in proc.stderr, proc.stderr
    names = sorted(os.path.basename(json.loads(line)["path"]) for line in out.read_text().splitlines())
    assert names == sorted(p.name for p in imgs.iterdir())
