"""Caption names: a.jpg and a.png never silently share a.txt; --caption-name full writes a.jpg.txt."""

from __future__ import annotations

import shutil

from cli_helpers import run_cli


def test_collisions_refused_before_anything_is_written(tmp_path, real_images, tiny_model):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    shutil.copy(real_images[0], d / "a.jpg")
    shutil.copy(real_images[1], d / "b.jpg")
    from PIL import Image

    Image.open(real_images[2]).save(d / "a.png")
    Image.open(real_images[3]).save(d / "sub" / "c.png")
    shutil.copy(real_images[4], d / "sub" / "c.jpeg")
    proc = run_cli("tag", str(d), "-r", "--model", str(tiny_model), "-f", "txt")
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert f"{d / 'a.jpg'} and {d / 'a.png'} -> a.txt" in err[0] or f"{d / 'a.png'} and {d / 'a.jpg'} -> a.txt" in err[0]
    assert "c.png" in err[0] and "c.jpeg" in err[0] and "--caption-name full" in err[0]
    assert not list(d.rglob("*.txt"))  # not even b.txt, which had no twin
    # the same under --output-dir, and with the Ray engine's writer (same check)
    proc = run_cli("tag", str(d), "-r", "--model", str(tiny_model), "-f", "txt", "--output-dir", str(tmp_path / "caps"))
    assert proc.returncode == 2 and "would be shared" in proc.stderr
    proc = run_cli("tag", str(d), "-r", "--model", str(tiny_model), "-f", "txt", "--engine", "ray")
    assert proc.returncode == 2 and "would be shared" in proc.stderr  # refused before Ray starts
    assert not list(d.rglob("*.txt"))
    # one image named twice is not a collision
    proc = run_cli("tag", str(d / "b.jpg"), "imgs/b.jpg", "--model", str(tiny_model), "-f", "txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # full names: every image its own caption
    (d / "b.txt").unlink()
    proc = run_cli("tag", str(d), "-r", "--model", str(tiny_model), "-f", "txt", "--caption-name", "full")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in d.rglob("*.txt")) == ["a.jpg.txt", "a.png.txt", "b.jpg.txt", "c.jpeg.txt", "c.png.txt"]
    assert (d / "a.jpg.txt").read_text() != (d / "a.png.txt").read_text()
    # --resume sees full-named captions as done
    proc = run_cli("tag", str(d), "-r", "--model", str(tiny_model), "-f", "txt", "--caption-name", "full", "--resume")
    assert "0 images to tag, 5 already done" in proc.stderr
