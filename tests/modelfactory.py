"""Builds tiny WD-layout models with onnx.helper for tests (no torch, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RATINGS = ["general", "sensitive", "questionable", "explicit"]
GENERAL = ["1girl", "long_hair", "very_long_hair", "smile", "blue_eyes", "^_^", "solo"]
CHARACTERS = ["hatsune_miku", "irys_(hololive)"]


def wd_labels(general=GENERAL, characters=CHARACTERS, ratings=RATINGS) -> list[tuple[str, int]]:
    return [(r, 9) for r in ratings] + [(g, 0) for g in general] + [(c, 4) for c in characters]


def write_labels(path: Path, labels: list[tuple[str, int]]) -> None:
    lines = ["tag_id,name,category,count"]
    for i, (name, cat) in enumerate(labels):
        lines.append(f'{1000 + i},"{name}",{cat},{100 - i}')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_wd_model(
    out_dir: Path,
    *,
    size: int = 32,
    labels: list[tuple[str, int]] | None = None,
    n_outputs: int | None = None,
    batch: int | str = "batch",
    seed: int = 0,
    metadata: dict | None = None,
    logits: bool = False,
    embedding: bool = False,
) -> Path:
    """model.onnx: [N,size,size,3] BGR 0..255 -> mean colour and spatial statistics -> linear -> sigmoid.

    `embedding`: a second output `embedding` [N, 6] (the features the linear layer reads), as
    the embedding-carrying WD exports have.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    labels = labels if labels is not None else wd_labels()
    n = n_outputs if n_outputs is not None else len(labels)
    rng = np.random.default_rng(seed)
    # Features: per-channel mean of the image and of its top-left quarter (so layout matters).
    w = (rng.standard_normal((6, n)) * 3.0).astype(np.float32)
    b = (rng.standard_normal(n) * 0.5).astype(np.float32)
    half = size // 2
    nodes = [
        helper.make_node("Div", ["input", "scale"], ["x"]),
        helper.make_node("ReduceMean", ["x", "axes_hw"], ["m_all"], keepdims=0),
        helper.make_node("Slice", ["x", "starts", "ends", "axes_hw"], ["quarter"]),
        helper.make_node("ReduceMean", ["quarter", "axes_hw"], ["m_q"], keepdims=0),
        helper.make_node("Concat", ["m_all", "m_q"], ["feat"], axis=1),
        helper.make_node("MatMul", ["feat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"]),
    ]
    if logits:
        nodes.append(helper.make_node("Identity", ["logits"], ["output"]))
    else:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, n])]
    if embedding:
        nodes.append(helper.make_node("Identity", ["feat"], ["embedding"]))
        outputs.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, 6]))
    inits = [
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes_hw"),
        numpy_helper.from_array(np.array([0, 0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([half, half], dtype=np.int64), "ends"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "B"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wd",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, size, size, 3])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    write_labels(out_dir / "selected_tags.csv", labels)
    if metadata is not None:
        (out_dir / "animetagnet.json").write_text(json.dumps(metadata), encoding="utf-8")
    return out_dir
