"""`animetagnet tag` end to end: formats, caption files that never lose text, failures, resume."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from PIL import Image

from cli_helpers import run_cli


@pytest.fixture()
def folder(tmp_path, real_images):
    """Real images in a small tree, plus a broken file and a non-image."""
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    for p in real_images[:3]:
        shutil.copy(p, root / p.name)
    for p in real_images[3:5]:
        shutil.copy(p, root / "sub" / p.name)
    Image.open(real_images[5]).save(root / "sub" / "alpha.png")
    (root / "broken.jpg").write_bytes(real_images[6].read_bytes()[:2000])
    (root / "notes.jpg").write_text("not an image")
    return root


def jsonl(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_jsonl_recursive_with_failures(folder, tiny_model):
    proc = run_cli("tag", str(folder), "-r", "--model", str(tiny_model), "-f", "jsonl")
    assert proc.returncode == 1  # some files failed
    recs = jsonl(proc.stdout)
    assert len(recs) == 8
    bad = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in recs if "error" in r}
    assert set(bad) == {"broken.jpg", "notes.jpg"}
    assert "cannot decode" in bad["broken.jpg"] and "not an image" in bad["notes.jpg"]
    good = [r for r in recs if "error" not in r]
    assert all(r["rating"] in ("general", "sensitive", "questionable", "explicit") for r in good)
    assert all(set(r["tags"]) == {"general", "character"} for r in good)
    assert "skipped" in proc.stderr and "8 images, 2 failed" in proc.stderr
    assert "cpu (CPUExecutionProvider)" in proc.stderr  # the device is always reported


def test_non_recursive_and_glob(folder, tiny_model):
    top = jsonl(run_cli("tag", str(folder), "--model", str(tiny_model), "-f", "jsonl", "-q").stdout)
    assert len(top) == 5  # sub/ not entered
    globbed = jsonl(run_cli("tag", str(folder / "**" / "*.png"), "--model", str(tiny_model), "-f", "jsonl", "-q").stdout)
    assert [r["path"].rsplit("/", 1)[-1] for r in globbed] == ["alpha.png"]
    missing = run_cli("tag", str(folder / "nothing*.jpg"), "--model", str(tiny_model), "-f", "jsonl")
    assert missing.returncode == 1 and "matched no file" in missing.stderr


def test_json_csv_table(folder, tiny_model, tmp_path):
    out = tmp_path / "r.json"
    proc = run_cli("tag", str(folder), "--model", str(tiny_model), "-f", "json", "-o", str(out), "--general-threshold", "0.5")
    assert proc.returncode == 1
    data = json.loads(out.read_text())
    assert len(data) == 5 and all(min(r["tags"]["general"].values(), default=1) >= 0.5 for r in data if "tags" in r)
    csv_out = run_cli("tag", str(folder / "sub"), "--model", str(tiny_model), "-f", "csv", "--spaces").stdout
    rows = list(csv.DictReader(io.StringIO(csv_out)))
    assert len(rows) == 3 and rows[0]["rating"] and "long hair" in csv_out
    table = run_cli("tag", str(folder / "sub"), "--model", str(tiny_model), "-f", "table").stdout
    assert "rating" in table and "general" in table


def test_existing_result_file_is_never_clobbered(folder, tiny_model, tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("precious\n")
    proc = run_cli("tag", str(folder), "--model", str(tiny_model), "-f", "jsonl", "-o", str(out))
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert out.read_text() == "precious\n"


def test_captions_on_existing_modes(folder, tiny_model, real_images):
    img = folder / real_images[0].name
    cap = img.with_suffix(".txt")
    cap.write_text("my_oc, long hair\n")
    base = ("tag", str(folder), "--model", str(tiny_model), "-f", "txt", "-q", "--general-threshold", "0.3")

    run_cli(*base)  # default: skip
    assert cap.read_text() == "my_oc, long hair\n"
    others = sorted(p.name for p in folder.glob("*.txt"))
    assert len(others) == 3  # the other two images got captions

    run_cli(*base, "--on-existing", "append")
    text = cap.read_text().strip()
    assert text.startswith("my_oc, long hair, ")
    tags = [t.strip() for t in text.split(",")]
    assert len(tags) == len(set(tags))
    assert "long_hair" not in tags  # already present as "long hair": not duplicated
    again = run_cli(*base, "--on-existing", "append")
    assert cap.read_text().strip() == text  # idempotent

    cap.write_text("my_oc\n")
    run_cli(*base, "--on-existing", "prepend")
    assert cap.read_text().strip().endswith(", my_oc")

    run_cli(*base, "--on-existing", "overwrite")
    assert "my_oc" not in cap.read_text()
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temp files


def test_caption_output_dir_mirrors_tree_and_formatting(folder, tiny_model, tmp_path):
    out = tmp_path / "caps"
    proc = run_cli("tag", str(folder), "-r", "--model", str(tiny_model), "-f", "txt", "--output-dir", str(out),
                   "--caption-extension", "caption", "--spaces", "--exclude", "smile", "--drop-implied",
                   "--general-threshold", "0.0", "--include-rating")
    assert proc.returncode == 1
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.caption"))
    assert len(files) == 6 and any(f.startswith("sub/") for f in files)
    text = (out / "sub" / "alpha.caption").read_text()
    tags = [t.strip() for t in text.split(",")]
    assert tags[0] in ("general", "sensitive", "questionable", "explicit")
    assert "smile" not in tags and "very long hair" in tags and "long hair" not in tags and "^_^" in tags
    assert not list(folder.rglob("*.caption"))  # nothing written beside the images


def test_resume_jsonl_after_interruption(folder, tiny_model, tmp_path):
    out = tmp_path / "r.jsonl"
    full = run_cli("tag", str(folder), "-r", "--model", str(tiny_model), "-f", "jsonl", "-o", str(out), "-q")
    lines = out.read_text().splitlines()
    assert len(lines) == 8
    # Simulate a kill: two complete records and half a line.
    out.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])
    proc = run_cli("tag", str(folder), "-r", "--model", str(tiny_model), "-f", "jsonl", "-o", str(out), "--resume")
    assert "2 already done" in proc.stderr
    recs = jsonl(out.read_text())
    assert sorted(r["path"] for r in recs) == sorted(json.loads(line)["path"] for line in lines)
    assert full.returncode == proc.returncode == 1


def test_resume_captions_skips_done(folder, tiny_model):
    run_cli("tag", str(folder / "sub"), "--model", str(tiny_model), "-f", "txt", "-q")
    proc = run_cli("tag", str(folder / "sub"), "--model", str(tiny_model), "-f", "txt", "--resume")
    assert "3 already done" in proc.stderr and "0 images to tag" in proc.stderr


def test_usage_errors(tiny_model, tmp_path):
    assert run_cli("tag", "--model", str(tiny_model)).returncode == 2
    proc = run_cli("tag", str(tmp_path), "--model", str(tmp_path / "nomodel"))
    assert proc.returncode == 2 and "model not found" in proc.stderr
    proc = run_cli("tag", str(tmp_path), "--model", str(tiny_model), "--general-threshold", "2")
    assert proc.returncode == 2 and "between 0 and 1" in proc.stderr
    proc = run_cli("tag", str(tmp_path), "--model", str(tiny_model), "-f", "jsonl", "--resume")
    assert proc.returncode == 2 and "--resume needs" in proc.stderr


def test_atomic_writes_keep_normal_permissions(tmp_path):
    import os
    import stat

    from animetagnet.fileio import atomic_write_text

    new = tmp_path / "new.txt"
    old_mask = os.umask(0o022)
    try:
        atomic_write_text(new, "a")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(new.stat().st_mode) == 0o644  # not mkstemp's 0600
    existing = tmp_path / "existing.txt"
    existing.write_text("x")
    existing.chmod(0o640)
    atomic_write_text(existing, "y")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640 and existing.read_text() == "y"


def test_resume_json_and_csv(folder, tiny_model, tmp_path):
    for fmt in ("json", "csv"):
        out = tmp_path / f"r.{fmt}"
        run_cli("tag", str(folder / "sub"), "--model", str(tiny_model), "-f", fmt, "-o", str(out), "-q")
        before = out.read_text()
        proc = run_cli("tag", str(folder / "sub"), "--model", str(tiny_model), "-f", fmt, "-o", str(out), "--resume")
        assert "3 already done" in proc.stderr and "0 images to tag" in proc.stderr, fmt
        assert out.read_text() == before  # nothing lost, nothing duplicated
