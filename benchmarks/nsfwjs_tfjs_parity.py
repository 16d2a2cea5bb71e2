#!/usr/bin/env python3
"""tools/nsfwjs_backbone.py against tfjs itself: nsfwjs' own model, run by nsfwjs in Node, on one input.

Needs Node.js and the two npm packages beside each other (no network once installed):

    npm install --prefix /tmp/tfjs @tensorflow/tfjs@4 nsfwjs@4.4.0
    npm pack nsfwjs@4.4.0
    python benchmarks/nsfwjs_tfjs_parity.py nsfwjs-4.4.0.tgz --node-modules /tmp/tfjs/node_modules

Both sides get the same deterministic 224x224 RGB input in [0, 1] (what nsfwjs feeds after its
/255). Node prints nsfwjs' five class probabilities and the pooled backbone features (layer
`out_relu`, averaged); Python runs the converted timm network, then nsfwjs' dense head from the
same package. Prints JSON with the largest differences.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = 224

NODE_SCRIPT = """
const tf = require('@tensorflow/tfjs');
const nsfwjs = require('nsfwjs');
(async () => {
  const m = await nsfwjs.load('MobileNetV2');
  const n = %(size)d * %(size)d * 3, a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = ((i * 7919) %% 1000) / 1000;
  const x = tf.tensor4d(a, [1, %(size)d, %(size)d, 3]);
  const lm = m.model;
  const feat = tf.model({inputs: lm.inputs, outputs: lm.getLayer('out_relu').output}).predict(x).mean([1, 2]);
  console.log(JSON.stringify({probs: Array.from(await lm.predict(x).data()), pooled: Array.from(await feat.data())}));
})();
"""


def fixed_input() -> np.ndarray:
    n = SIZE * SIZE * 3
    return ((np.arange(n, dtype=np.int64) * 7919) % 1000 / 1000).astype(np.float32).reshape(1, SIZE, SIZE, 3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", type=Path, help="nsfwjs-4.4.0.tgz (npm pack)")
    ap.add_argument("--node-modules", type=Path, required=True, help="node_modules holding @tensorflow/tfjs and nsfwjs")
    args = ap.parse_args()
    import timm
    import torch
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("nsfwjs_backbone", ROOT / "tools" / "nsfwjs_backbone.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "parity.js"
        script.write_text(NODE_SCRIPT % {"size": SIZE})
        node = subprocess.run(["node", str(script)], capture_output=True, text=True, check=True,
                              env={"NODE_PATH": str(args.node_modules.resolve()), "PATH": "/usr/bin:/usr/local/bin:/bin"})
        ref = json.loads(node.stdout.strip().splitlines()[-1])
        tool.convert(args.package, Path(tmp) / "ckpt")
        net = timm.create_model("mobilenetv2_100", num_classes=0, **tool.CONFIG["model_args"]).eval()
        net.load_state_dict(load_file(str(Path(tmp) / "ckpt" / "model.safetensors")))
    keras = tool.dequantise(*tool.read_package(args.package))
    with torch.no_grad():
        pooled = net(torch.from_numpy(fixed_input()).permute(0, 3, 1, 2)).numpy()  # num_classes=0: pooled features
    h = pooled
    for i in (1, 2, 3):  # nsfwjs' head: dense 256 relu, dense 128 relu, dense 5 softmax
        h = h @ keras[f"dense_{i}/kernel"] + keras[f"dense_{i}/bias"]
        h = np.maximum(h, 0) if i < 3 else np.exp(h - h.max()) / np.exp(h - h.max()).sum()
    print(json.dumps({
        "input": f"1x{SIZE}x{SIZE}x3 fixed pattern in [0, 1]",
        "tfjs_probs": [round(v, 6) for v in ref["probs"]], "ours_probs": [round(float(v), 6) for v in h[0]],
        "max_abs_diff_probs": float(np.abs(np.asarray(ref["probs"]) - h[0]).max()),
        "max_abs_diff_pooled": float(np.abs(np.asarray(ref["pooled"]) - pooled[0]).max()),
        "pooled_scale": float(np.abs(pooled).max()),
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
