"""Broken model files are one-line errors with exit 2, never tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from modelfactory import build_wd_model


def unknown_rank_model(out_dir: Path, declared=None, extra_dims=(1,)) -> Path:
    """Output 0 reshaped to [N, tags, 1] through a shape of data-dependent length: its rank is unknown
    to shape inference, so onnxruntime cannot check it; `declared` is what the graph claims."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    d = build_wd_model(out_dir)
    m = onnx.load(str(d / "model.onnx"))
    g = m.graph
    for node in g.node:
        if node.output[0] == "output":
            node.output[0] = "probs"
    g.initializer.extend([numpy_helper.from_array(np.array(extra_dims, dtype=np.int64), "extra"),
                          numpy_helper.from_array(np.ones(2 + len(extra_dims), dtype=bool), "keep")])
    g.node.extend([
        helper.make_node("Shape", ["probs"], ["s2"]),
        helper.make_node("Concat", ["s2", "extra"], ["s3"], axis=0),
        helper.make_node("Compress", ["s3", "keep"], ["s3c"], axis=0),
        helper.make_node("Reshape", ["probs", "s3c"], ["output"]),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, declared))
    onnx.save(m, str(d / "model.onnx"))
    return d


def check_one_line(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]


@pytest.fixture()
def image(tmp_path, real_images):
    return str(real_images[0])


def test_non_utf8_label_file(tmp_path, image):
    d = build_wd_model(tmp_path / "m")
    labels = d / "selected_tags.csv"
    labels.write_bytes(labels.read_bytes().replace(b"solo", "sol\u00f6".encode("latin-1")))
    check_one_line(run_cli("tag", image, "--model", str(d)), "not UTF-8", "selected_tags.csv")


@pytest.mark.parametrize("meta, needle", [
    ({"preprocessing": {"size": "big"}}, "'size' must be a positive whole number"),
    ({"preprocessing": {"size": -3}}, "'size' must be a positive whole number"),
    ({"preprocessing": "big"}, "'preprocessing' must be a JSON object"),
    ({"thresholds": {"presets": {"x": 0.5}}}, "'presets' must map"),
])
def test_bad_metadata_values(tmp_path, image, meta, needle):
    d = build_wd_model(tmp_path / "m", metadata=meta)
    check_one_line(run_cli("tag", image, "--model", str(d)), needle)


def test_non_utf8_metadata(tmp_path, image):
    d = build_wd_model(tmp_path / "m")
    (d / "animetagnet.json").write_bytes(b'{"name": "\xff"}')
    check_one_line(run_cli("tag", image, "--model", str(d)), "invalid JSON")


@pytest.mark.parametrize("declared", [None, ["batch", 13]])
def test_output_of_unknown_rank(tmp_path, image, declared):
    d = unknown_rank_model(tmp_path / "m", declared)
    check_one_line(run_cli("tag", image, "--model", str(d), "-f", "jsonl"), "output 0 must be [N, tags]",
                   "returned shape [1, 13, 1]")


def test_output_of_unknown_rank_that_is_right_works(tmp_path, image):
    d = unknown_rank_model(tmp_path / "m", None, extra_dims=())  # rank unknown to onnxruntime, [N, tags] in fact
    proc = run_cli("tag", image, "--model", str(d), "-f", "jsonl")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tags"]
