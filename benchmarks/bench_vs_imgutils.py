"""imgutils `get_wd14_tags` vs `animetagnet tag`: the same exported model, the same folders, one run.

Models (WD layout with the 10,861-tag WD v3 head and an `embedding` output, which imgutils requires;
random weights with a sparse head bias, as in bench_tagging.py): a small CNN (timm efficientnet_b0
at 320 px) and a WD-size network (ViT-B/16 at 448 px). Folders: the 22 real 512 px posts and 16
large photos (2000x3000 / 3000x2000 JPEGs made from them), from bench_tagging.make_image_sets.

imgutils runs in a subprocess against an offline Hugging Face cache entry holding the model under
the repo ids it reads (as tests/test_imgutils_compat.py lays it out); it tags one image per call,
timed after one warm-up call (the model load). `animetagnet tag FOLDER -f jsonl -o FILE` runs as
a subprocess too; its own summary (images/s, model load excluded) is the figure, default decoding.
Both use onnxruntime on the CPU with all usable cores. Tag-set agreement between the two is
reported at the default thresholds (0.35 general / 0.85 character).

    python benchmarks/bench_vs_imgutils.py [--models small,wd] [--limit-wd 8] [--repeat 3] [--cache DIR] > out.json

Needs torch + timm (to build the models once) and dghs-imgutils (`pip install --no-deps`, see .ci/run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_tagging import DATA, machine, make_image_sets  # noqa: E402

MODELS = {"small": ("efficientnet_b0", 320), "wd": ("vit_base_patch16_224", 448)}
LABEL_REPO = "SmilingWolf/wd-swinv2-tagger-v3"  # imgutils model_name "SwinV2_v3"
MODEL_REPO = "deepghs/wd14_tagger_with_embeddings"
REV = "0" * 40

IMGUTILS = r"""
import json, sys, time
from imgutils.tagging import get_wd14_tags
paths = sys.argv[1:]
get_wd14_tags(paths[0], model_name="SwinV2_v3")  # loads the model
t = time.perf_counter()
out = []
for p in paths:
    rating, general, character = get_wd14_tags(p, model_name="SwinV2_v3")
    out.append(sorted(general) + sorted(character))
dt = time.perf_counter() - t
print(json.dumps({"images_per_s": len(paths) / dt, "seconds": dt, "tags": out}))
"""


def export_with_embedding(arch: str, size: int, out: Path) -> Path:
    """timm network in WD layout: NHWC BGR 0..255 in; outputs sigmoid probabilities and the pooled features."""
    if (out / "model.onnx").exists():
        return out
    import timm
    import torch

    labels = DATA / "tags" / "wd_v3_selected_tags.csv"
    n = sum(1 for _ in open(labels, encoding="utf-8")) - 1
    kwargs = {"img_size": size} if arch.startswith("vit") else {}
    net = timm.create_model(arch, pretrained=False, num_classes=n, **kwargs).eval()
    with torch.no_grad():  # sparse outputs like a trained tagger's (see bench_tagging.export_wd_model)
        net.get_classifier().bias.copy_(torch.randn(n, generator=torch.Generator().manual_seed(0)) * 1.5 - 5.0)

    class WD(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.full((1, 3, 1, 1), 127.5))

        def forward(self, x):
            x = (x.permute(0, 3, 1, 2).flip(1) - self.mean) / self.mean  # NHWC BGR -> NCHW RGB, [-1, 1]
            pooled = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
            return torch.sigmoid(self.net.get_classifier()(pooled)), pooled

    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(WD(net), torch.zeros(1, size, size, 3), str(tmp / "model.onnx"), input_names=["input"],
                          output_names=["output", "embedding"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=17, dynamo=False)
    shutil.copy(labels, tmp / "selected_tags.csv")
    tmp.rename(out)
    return out


def hf_cache(model: Path, root: Path) -> Path:
    cache = root / "hub"
    for repo, files in ((MODEL_REPO, {f"{LABEL_REPO}/model.onnx": model / "model.onnx"}),
                        (LABEL_REPO, {"selected_tags.csv": model / "selected_tags.csv"})):
        d = cache / ("models--" + repo.replace("/", "--"))
        for name, src in files.items():
            dst = d / "snapshots" / REV / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                os.symlink(src.resolve(), dst)
        (d / "refs").mkdir(exist_ok=True)
        (d / "refs" / "main").write_text(REV)
    return cache


def run_imgutils(model: Path, paths: list[Path], root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(hf_cache(model, root)), HF_HUB_OFFLINE="1",
               ONNX_MODE="cpu")
    proc = subprocess.run([sys.executable, "-c", IMGUTILS, *map(str, paths)], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"imgutils failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def run_ours(model: Path, folder: Path, root: Path, *extra: str) -> dict:
    out = root / "ours.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "animetagnet", "tag", str(folder), "--model", str(model),
                           "-f", "jsonl", "-o", str(out), "--on-existing", "overwrite", "--no-progress", *extra],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"animetagnet tag failed: {proc.stderr[-2000:]}")
    m = re.search(r"([\d.]+) images/s", proc.stderr)
    rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["path"])
    tags = [sorted(r["tags"].get("general", {})) + sorted(r["tags"].get("character", {})) for r in rows]
    return {"images_per_s": float(m.group(1)), "tags": tags, "summary": proc.stderr.strip().splitlines()[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,wd")
    ap.add_argument("--limit-wd", type=int, default=8, help="images per folder for the WD-size model")
    ap.add_argument("--sets", default="small,large")
    ap.add_argument("--repeat", type=int, default=1, help="alternating runs per folder; medians reported")
    ap.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "animetagnet-bench"))
    args = ap.parse_args()
    cache = Path(args.cache)
    sets = make_image_sets(cache)
    result = {"machine": machine(), "load_average_before": os.getloadavg(), "results": {}}
    for key in args.models.split(","):
        arch, size = MODELS[key]
        model = export_with_embedding(arch, size, cache / f"emb-{key}-{arch}-{size}")
        for set_name, paths in sets.items():
            if set_name not in args.sets.split(","):
                continue
            paths = sorted(paths)[: args.limit_wd] if key == "wd" else sorted(paths)
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                folder = root / "images"
                folder.mkdir()
                for p in paths:
                    os.symlink(p.resolve(), folder / p.name)
                links = sorted(folder.iterdir())
                # Alternating runs, medians: the machine is shared, so load drifts between runs.
                runs = [(run_imgutils(model, links, root), run_ours(model, folder, root),
                         run_ours(model, folder, root, "--exact")) for _ in range(args.repeat)]
                theirs, ours, exact = ({**r[0], "images_per_s": statistics.median(x["images_per_s"] for x in r)}
                                       for r in zip(*runs))
            row = {
                "model": f"{arch}@{size}", "images": len(paths), "runs": args.repeat,
                "imgutils_images_per_s": round(theirs["images_per_s"], 2),
                "animetagnet_images_per_s": ours["images_per_s"],
                "animetagnet_exact_images_per_s": exact["images_per_s"],
                "ratio": round(ours["images_per_s"] / theirs["images_per_s"], 2),
                "ratio_exact": round(exact["images_per_s"] / theirs["images_per_s"], 2),
                "same_tag_sets_default": sum(a == b for a, b in zip(theirs["tags"], ours["tags"])),
                "same_tag_sets_exact": sum(a == b for a, b in zip(theirs["tags"], exact["tags"])),
                "mean_tags_per_image": round(sum(map(len, theirs["tags"])) / len(paths), 1),
                "animetagnet_summary": ours["summary"],
            }
            result["results"][f"{key}/{set_name}"] = row
            print(f"{key}/{set_name}: imgutils {row['imgutils_images_per_s']} img/s, animetagnet "
                  f"{row['animetagnet_images_per_s']} ({row['ratio']}x; --exact {row['ratio_exact']}x)", file=sys.stderr)
    result["load_average_after"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
