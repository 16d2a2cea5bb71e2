"""tools/nsfwjs_backbone.py: nsfwjs' bundled Keras MobileNetV2 -> a timm checkpoint that `init_from` reads.

The real package never reaches the tests (no network): a package of the same layout is built
here, its tensors named and shaped from Keras' MobileNetV2 definition written out below (not
from the tool's mapping), stored as tfjs does (uint8 per tensor, one base64 shard in a minified
module). The real package was checked against tfjs itself once (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from train_helpers import ROOT, make_synthetic  # noqa: E402

TOOL = ROOT / "tools" / "nsfwjs_backbone.py"


def _tool():
    spec = importlib.util.spec_from_file_location("nsfwjs_backbone_for_test", TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def keras_mobilenet_v2() -> list[tuple[str, list[int]]]:
    """(name, Keras shape) of every weight of keras.applications.MobileNetV2 (alpha 1) + nsfwjs' head."""
    out: list[tuple[str, list[int]]] = []

    def conv(name, k, cin, cout, depthwise=False):
        out.append((f"{name}/depthwise_kernel" if depthwise else f"{name}/kernel", [k, k, cin, 1 if depthwise else cout]))

    def bn(name, c):
        out.extend((f"{name}/{v}", [c]) for v in ("gamma", "beta", "moving_mean", "moving_variance"))

    conv("Conv1", 3, 3, 32), bn("bn_Conv1", 32)
    conv("expanded_conv_depthwise", 3, 32, 32, True), bn("expanded_conv_depthwise_BN", 32)
    conv("expanded_conv_project", 1, 32, 16), bn("expanded_conv_project_BN", 16)
    cin, block = 16, 1
    for cout, repeats in ((24, 2), (32, 3), (64, 4), (96, 3), (160, 3), (320, 1)):  # expansion 6 throughout
        for _ in range(repeats):
            mid = cin * 6
            conv(f"block_{block}_expand", 1, cin, mid), bn(f"block_{block}_expand_BN", mid)
            conv(f"block_{block}_depthwise", 3, mid, mid, True), bn(f"block_{block}_depthwise_BN", mid)
            conv(f"block_{block}_project", 1, mid, cout), bn(f"block_{block}_project_BN", cout)
            cin, block = cout, block + 1
    conv("Conv_1", 1, 320, 1280), bn("Conv_1_bn", 1280)
    for i, (a, b) in enumerate(((1280, 256), (256, 128), (128, 5)), 1):
        out += [(f"dense_{i}/kernel", [a, b]), (f"dense_{i}/bias", [b])]
    return out


def build_package(path, shapes, rng, *, drop_last_byte=False) -> dict[str, np.ndarray]:
    """An npm-pack tarball with nsfwjs' model layout; returns the dequantised tensors it holds."""
    entries, shard, values = [], bytearray(), {}
    for name, shape in shapes:
        q = rng.integers(0, 256, int(np.prod(shape)), dtype=np.uint8)
        lo, scale = float(rng.uniform(-1, 0)), float(rng.uniform(1e-3, 1e-2))
        if name.endswith("moving_variance"):
            lo = float(rng.uniform(0.5, 1))  # a variance is positive (the real ones are)
        entries.append(f'{{name:"{name}",shape:[{",".join(map(str, shape))}],dtype:"float32",'
                       f'quantization:{{min:{lo},scale:{scale},dtype:"uint8"}}}}')
        shard += q.tobytes()
        values[name] = (q.astype(np.float32) * np.float32(scale) + np.float32(lo)).reshape(shape)
    if drop_last_byte:
        shard = shard[:-1]
    # Layer names appear in the topology too (as in the real file): the manifest is what counts.
    model_js = ('!function(e){}(function(){return{1:[function(e,a,n){a.exports={modelTopology:{layers:'
                '[{name:"Conv1",class_name:"Conv2D"}]},weightsManifest:[{paths:["group1-shard1of1"],weights:['
                + ",".join(entries) + "]}]}},{}]}});")
    shard_js = '!function(e){}(function(){return{1:[function(e,a,n){a.exports="' + base64.b64encode(bytes(shard)).decode() + '"}]}});'
    with tarfile.open(path, "w:gz") as tar:
        for name, text in (("model.min.js", model_js), ("group1-shard1of1.min.js", shard_js)):
            data = text.encode()
            info = tarfile.TarInfo(f"package/dist/models/mobilenet_v2/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return values


def test_converts_every_keras_tensor_to_its_timm_place(tmp_path):
    values = build_package(tmp_path / "nsfwjs.tgz", keras_mobilenet_v2(), np.random.default_rng(0))
    run = subprocess.run([sys.executable, str(TOOL), str(tmp_path / "nsfwjs.tgz"), "--out", str(tmp_path / "ckpt")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["architecture"] == "mobilenetv2_100" and cfg["pretrained_cfg"]["std"] == [1.0, 1.0, 1.0]
    net = timm.create_model(cfg["architecture"], num_classes=0, **cfg["model_args"])
    net.load_state_dict(state, strict=True)  # every tensor of the network, none left over
    # Keras layout -> PyTorch layout, at the right block: block_5 is the third block of the 32-channel stage.
    assert np.array_equal(state["conv_stem.weight"].numpy(), values["Conv1/kernel"].transpose(3, 2, 0, 1))
    dw = values["block_5_depthwise/depthwise_kernel"]  # [3, 3, 192, 1]
    assert np.array_equal(state["blocks.2.2.conv_dw.weight"].numpy()[:, 0], dw[:, :, :, 0].transpose(2, 0, 1))
    assert np.array_equal(state["blocks.6.0.bn3.running_var"].numpy(), values["block_16_project_BN/moving_variance"])
    assert np.array_equal(state["blocks.0.0.conv_pw.weight"].numpy()[:, :, 0, 0], values["expanded_conv_project/kernel"][0, 0].T)
    assert not any(k.startswith("classifier") for k in state)  # nsfwjs' five-class head is dropped


def test_the_checkpoint_is_a_model_init_from_source(tmp_path):
    """`init_from` takes the directory: architecture, Keras-exact layers and the normalisation come with it."""
    from animetagnet_train import config
    from animetagnet_train.model import build
    from animetagnet.vocab import Vocabulary

    tool = _tool()
    build_package(tmp_path / "nsfwjs.tgz", keras_mobilenet_v2(), np.random.default_rng(1))
    tool.convert(tmp_path / "nsfwjs.tgz", tmp_path / "ckpt")
    ds = make_synthetic(tmp_path / "ds")
    cfg = config.load(ROOT / "configs" / "smoke.yaml", ["model.backbone=mobilenetv2_100", f"model.init_from={tmp_path / 'ckpt'}"])
    model, info = build(cfg.model, Vocabulary.read_csv(ds / "selected_tags.csv"))
    assert info["head"].startswith("new") and cfg.model.mean == [0.0, 0.0, 0.0] and cfg.model.std == [1.0, 1.0, 1.0]
    assert cfg.model.timm_args == {"pad_type": "same", "bn_eps": 0.001}
    assert model.backbone.bn1.eps == 1e-3


def test_the_pretrained_faces_recipe_trains_and_exports_from_it(tmp_path):
    """configs/faces-pretrained-cpu.yaml as shipped (sizes and epochs cut), on a converted checkpoint:
    it trains, and its TF-style padded network exports to ONNX with parity (export checks 1e-4)."""
    from animetagnet_train import config, export
    from animetagnet_train.train import train

    build_package(tmp_path / "nsfwjs.tgz", keras_mobilenet_v2(), np.random.default_rng(3))
    _tool().convert(tmp_path / "nsfwjs.tgz", tmp_path / "ckpt")
    ds = make_synthetic(tmp_path / "ds")
    cfg = config.load(ROOT / "configs" / "faces-pretrained-cpu.yaml", [
        f"model.init_from={tmp_path / 'ckpt'}", "model.image_size=64", "train.epochs=1", "data.workers=0",
        "data.batch_size=16", "train.threads=1"])
    train(ds, tmp_path / "run", cfg)
    meta = export.export(tmp_path / "run", tmp_path / "model", log=lambda m: None)
    assert meta["provenance"]["backbone"] == "mobilenetv2_100" and meta["parity"]["max_abs_diff"] <= 1e-4
    assert meta["provenance"]["config"]["model"]["timm_args"] == {"pad_type": "same", "bn_eps": 0.001}


def test_a_file_that_is_not_the_expected_layout_is_one_line(tmp_path):
    build_package(tmp_path / "short.tgz", keras_mobilenet_v2(), np.random.default_rng(2), drop_last_byte=True)
    (tmp_path / "other.tgz").write_bytes(b"not a tarball")
    for name in ("short.tgz", "other.tgz", "missing.tgz"):
        run = subprocess.run([sys.executable, str(TOOL), str(tmp_path / name), "--out", str(tmp_path / "ckpt")],
                             capture_output=True, text=True)
        assert run.returncode != 0 and "Traceback" not in run.stderr, (name, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()
