#!/usr/bin/env python3
"""Pretrained MobileNetV2 weights for `model.init_from`, from the nsfwjs package on the npm registry.

No Hugging Face download reaches some machines (this project's included), but the npm registry
does, and nsfwjs (MIT, Infinite Red) ships its MobileNetV2 inside the package: Keras'
ImageNet MobileNetV2 whose last six blocks (and last convolution) were fine-tuned on web images
in five classes, two of them drawings and hentai, so it has seen anime art. This writes its backbone as a timm
checkpoint directory that `model.init_from` reads (the five-class head is dropped):

    npm pack nsfwjs@4.4.0                       # nsfwjs-4.4.0.tgz, 25 MB, from registry.npmjs.org
    python tools/nsfwjs_backbone.py nsfwjs-4.4.0.tgz --out pretrained/nsfwjs-mobilenetv2

OUT/model.safetensors holds timm `mobilenetv2_100` tensors and OUT/config.json the
architecture, the arguments that reproduce Keras' layers exactly (TF "same" padding: Keras pads
stride-2 convolutions on the bottom/right only; BatchNorm epsilon 1e-3) and the normalisation
nsfwjs feeds (RGB / 255, so mean 0 and std 1). The weights are stored quantised to uint8 per
tensor in the package (tfjs `quantization`); they are dequantised here, which is what nsfwjs
itself runs. Every tensor of the manifest must be used and fill the shard exactly, or this stops
with one line (ValueError from the functions, for the benchmark and tests that call them).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from animetagnet.fileio import atomic_write_text  # noqa: E402

MODEL = "package/dist/models/mobilenet_v2"
#: One manifest entry of the minified tfjs model file (keys in the order the package writes them).
WEIGHT_ENTRY = re.compile(
    r'\{name:"(?P<name>[^"]+)",shape:\[(?P<shape>[\d,]*)\],dtype:"float32"'
    r',quantization:\{min:(?P<min>[-\d.e]+),scale:(?P<scale>[-\d.e]+),dtype:"uint8"\}\}')
#: timm mobilenetv2_100: blocks per stage after the first (Keras block_1 .. block_16, in order).
STAGE_SIZES = (2, 3, 4, 3, 3, 1)
BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def read_package(src: Path) -> tuple[str, bytes]:
    """(model file text, shard bytes) from an `npm pack` tarball or an unpacked package folder."""
    names = (f"{MODEL}/model.min.js", f"{MODEL}/group1-shard1of1.min.js")
    if src.is_dir():
        root = src.parent if src.name == "package" else src
        texts = [(root / n).read_text(encoding="utf-8") for n in names]
    else:
        with tarfile.open(src) as tar:
            texts = [tar.extractfile(n).read().decode("utf-8") for n in names]
    # The shard module exports one base64 string: the longest quoted run in the file.
    b64 = max(re.findall(r'"([A-Za-z0-9+/=]{1000,})"', texts[1]), key=len)
    return texts[0], base64.b64decode(b64)


def dequantise(model_js: str, shard: bytes) -> dict[str, np.ndarray]:
    """Keras tensor name -> float32 array, in manifest order, dequantised as tfjs does (q * scale + min)."""
    out, offset = {}, 0
    manifest = model_js.index("weightsManifest")
    for m in WEIGHT_ENTRY.finditer(model_js, manifest):
        shape = [int(v) for v in m["shape"].split(",") if v]
        n = int(np.prod(shape))
        q = np.frombuffer(shard, dtype=np.uint8, count=n, offset=offset)
        out[m["name"]] = (q.astype(np.float32) * np.float32(m["scale"]) + np.float32(m["min"])).reshape(shape)
        offset += n
    declared = model_js[manifest:].count('{name:"')
    if len(out) != declared or offset != len(shard):
        raise ValueError(f"read {len(out)} of {declared} tensors covering {offset} of {len(shard)} shard bytes")
    return out


def timm_name(keras: str) -> str | None:
    """timm mobilenetv2_100 state-dict key for a Keras MobileNetV2 tensor (None: the nsfwjs head, dropped)."""
    layer, var = keras.split("/")
    if layer.startswith("dense_"):
        return None
    bn = BN.get(var)
    fixed = {"Conv1": "conv_stem", "bn_Conv1": "bn1", "Conv_1": "conv_head", "Conv_1_bn": "bn2",
             "expanded_conv_depthwise": "blocks.0.0.conv_dw", "expanded_conv_depthwise_BN": "blocks.0.0.bn1",
             "expanded_conv_project": "blocks.0.0.conv_pw", "expanded_conv_project_BN": "blocks.0.0.bn2"}
    if layer in fixed:
        return f"{fixed[layer]}.{bn or 'weight'}"
    m = re.fullmatch(r"block_(\d+)_(expand|depthwise|project)(_BN)?", layer)
    if not m:
        raise ValueError(f"unexpected tensor {keras!r}")
    i, part, is_bn = int(m[1]) - 1, m[2], bool(m[3])
    stage = next(s for s in range(len(STAGE_SIZES)) if i < sum(STAGE_SIZES[: s + 1]))
    block = f"blocks.{stage + 1}.{i - sum(STAGE_SIZES[:stage])}"
    conv, norm = {"expand": ("conv_pw", "bn1"), "depthwise": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3")}[part]
    return f"{block}.{norm}.{bn}" if is_bn else f"{block}.{conv}.weight"


def to_torch_layout(keras: str, a: np.ndarray) -> np.ndarray:
    if a.ndim != 4:
        return a
    if "depthwise_kernel" in keras:  # [kh, kw, in, multiplier] -> [in * multiplier, 1, kh, kw]
        return a.transpose(2, 3, 0, 1).reshape(-1, 1, a.shape[0], a.shape[1])
    return a.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]


CONFIG = {
    "architecture": "mobilenetv2_100",
    # Keras' layers exactly: TF "same" padding and BatchNorm epsilon 1e-3.
    "model_args": {"pad_type": "same", "bn_eps": 0.001},
    "pretrained_cfg": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "input_size": [3, 224, 224],
                       "source": "nsfwjs 4.4.0 (npm, MIT, Infinite Red) dist/models/mobilenet_v2: Keras ImageNet "
                                 "MobileNetV2, blocks 11-16 and the last convolution fine-tuned on web images "
                                 "(classes Drawing, Hentai, Neutral, Porn, Sexy); weights uint8-quantised"},
}


def convert(src: Path, out: Path) -> dict:
    import torch
    from safetensors.torch import save_file

    model_js, shard = read_package(src)
    keras = dequantise(model_js, shard)
    state = {}
    for name, a in keras.items():
        key = timm_name(name)
        if key is not None:
            state[key] = torch.from_numpy(np.ascontiguousarray(to_torch_layout(name, a)))
    import timm

    ref = timm.create_model("mobilenetv2_100", num_classes=0, **CONFIG["model_args"]).state_dict()
    want = {k: v.shape for k, v in ref.items() if not k.endswith("num_batches_tracked")}
    got = {k: v.shape for k, v in state.items()}
    if want != got:
        bad = sorted(set(want) ^ set(got)) or [k for k in want if want[k] != got[k]]
        raise ValueError(f"converted tensors do not fit timm mobilenetv2_100: {bad[:5]}")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.partial"
    save_file(state, str(tmp), metadata={"source": "nsfwjs 4.4.0 mobilenet_v2"})
    atomic_write_text(out / "config.json", json.dumps(CONFIG, indent=1) + "\n")
    tmp.replace(out / "model.safetensors")
    return {"tensors": len(state), "parameters": int(sum(v.numel() for v in state.values())), "out": str(out)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path, help="nsfwjs-4.4.0.tgz from `npm pack nsfwjs@4.4.0`, or its unpacked folder")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint directory to write (model.safetensors + config.json)")
    args = ap.parse_args()
    if not args.package.exists():
        print(f"nsfwjs_backbone: {args.package}: no such file or folder", file=sys.stderr)
        return 2
    try:
        info = convert(args.package, args.out)
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        print(f"nsfwjs_backbone: {args.package}: not an nsfwjs package ({first})", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
