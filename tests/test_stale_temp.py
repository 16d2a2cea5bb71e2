"""Temporary files of a killed atomic write are removed by later runs: only ours, by pattern and age."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

from animetagnet.fileio import TEMP_PATTERN, cleanup_stale_temp
from cli_helpers import REPO, run_cli


def aged(path, seconds=7200):
    path.write_bytes(b"half")
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def test_a_killed_write_leaves_our_pattern(tmp_path):
    """A real kill -9 inside atomic_write_bytes, between the temporary file and the rename."""
    target = tmp_path / "out.json"
    code = ("import os, sys\n"
            "import animetagnet.fileio as f\n"
            "real = os.replace\n"
            "os.replace = lambda *a: os.kill(os.getpid(), 9)\n"
            f"f.atomic_write_text({str(target)!r}, 'x' * 100000)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and TEMP_PATTERN.match(left[0]).group("target") == "out.json"


def test_cleanup_rules(tmp_path):
    stale = aged(tmp_path / ".a.txt.k2j4_9zq.tmp")
    young = aged(tmp_path / ".b.txt.k2j4_9zq.tmp", seconds=60)
    not_ours = aged(tmp_path / ".a.txt.backup.tmp")  # not mkstemp's 8 characters
    other_name = aged(tmp_path / ".a.csv.k2j4_9zq.tmp")
    os.symlink(stale, tmp_path / ".c.txt.k2j4_9zq.tmp")
    assert cleanup_stale_temp(tmp_path, lambda n: n.endswith(".txt")) == 1
    assert not stale.exists() and young.exists() and not_ours.exists() and other_name.exists()
    assert cleanup_stale_temp(tmp_path / "missing") == 0


def test_runs_clean_the_folders_they_write(tmp_path, real_images, tiny_model):
    d = tmp_path / "imgs"
    d.mkdir()
    for p in real_images[:2]:
        shutil.copy(p, d / p.name)
    cap_tmp = aged(d / f".{real_images[0].stem}.txt.abcd1234.tmp")
    img_tmp = aged(d / f".{real_images[0].name}.abcd1234.tmp")  # not a name we write: kept
    out = tmp_path / "res"
    out.mkdir()
    res_tmp = aged(out / ".r.jsonl.abcd1234.tmp")
    other_res = aged(out / ".s.jsonl.abcd1234.tmp")
    assert run_cli("tag", str(d), "--model", str(tiny_model), "-f", "txt", "-q").returncode == 0
    assert not cap_tmp.exists() and img_tmp.exists()
    assert run_cli("tag", str(d), "--model", str(tiny_model), "-f", "jsonl", "-o", str(out / "r.jsonl"), "-q").returncode == 0
    assert not res_tmp.exists() and other_res.exists()
