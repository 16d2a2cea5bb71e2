"""benchmarks/gpu_tagging_training.py --smoke: the GPU benchmark's whole path, on the CPU with tiny models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_helpers import REPO

pytest.importorskip("timm")


@pytest.mark.slow
def test_gpu_benchmark_smoke_writes_its_json(shared_data, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), ANIMETAGNET_DATA=str(shared_data))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_tagging_training.py"), str(tmp_path), "--smoke"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tagging = json.loads((tmp_path / "tagging.json").read_text())
    for key in ("vit", "cnn"):
        row = tagging[key]
        assert row["model_only_images_per_s"] > 0
        for name in ("512px", "large"):
            for decoder in ("threads", "processes", "gpu"):
                res = row[f"e2e_{name}_{decoder}"]
                assert res["failed"] == 0 and res["images"] > 0 and res["images_per_s"] > 0
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["max_prob_diff_fp32_vs_cpu_fp32"] <= 1e-5  # CPU vs CPU here: the same computation
    assert checks["decode_pixels_exact_True"]["max"] <= 2
    training = json.loads((tmp_path / "training.json").read_text())
    for name in ("decode_every_epoch", "cache"):
        assert training[name]["images_per_s"] > 0 and 0 <= training[name]["data_wait_share"] <= 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= {"vit_512px", "training_cache", "seconds"}
