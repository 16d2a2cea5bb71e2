"""Throughput of `animetagnet tag` on one machine: the local engine vs the Ray engine, same images,
same model, same options; checks that both wrote the same records. Prints JSON.

    python benchmarks/bench_ray.py                      # faces + danbooru-512px, tiny + efficientnet_b0
    python benchmarks/bench_ray.py --faces 400 --repeats 1 --models cnn

Ray is started once in this process (its start-up time is reported apart, as on a real
cluster that is already running); each Ray run still creates its replica actors and loads the
model in them, which is counted. Needs torch + timm (to export the CNN) and the `ray` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]
DATA = Path(os.environ.get("ANIMETAGNET_DATA", ROOT.parent / "shared" / "data"))


def export_cnn(out_dir: Path, size: int = 320, n_tags: int = 500) -> Path:
    """timm efficientnet_b0 with random weights, exported in WD layout (NHWC BGR 0..255 -> sigmoid)."""
    import timm
    import torch

    from modelfactory import write_labels

    class WDWrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=n_tags)
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

        def forward(self, x):  # x: [N, H, W, 3] BGR 0..255
            x = x.permute(0, 3, 1, 2).flip(1)
            return torch.sigmoid(self.net((x - self.mean) / self.std))

    torch.manual_seed(0)
    model = WDWrapper().eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, torch.rand(1, size, size, 3) * 255, str(out_dir / "model.onnx"),
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    labels = [(r, 9) for r in ("general", "sensitive", "questionable", "explicit")]
    labels += [(f"tag_{i}", 0) for i in range(n_tags - 4 - 50)] + [(f"char_{i}", 4) for i in range(50)]
    write_labels(out_dir / "selected_tags.csv", labels)
    return out_dir


def image_sets(tmp: Path, n_faces: int, danbooru_copies: int) -> dict[str, list[str]]:
    sets = {}
    faces = sorted(str(p) for p in (DATA / "faces").rglob("*.jpg"))[:n_faces]
    if faces:
        sets[f"faces-128px x{len(faces)}"] = faces
    dan = sorted((DATA / "danbooru-512px").rglob("*.jpg"))
    if dan and danbooru_copies > 0:
        links = []
        for k in range(danbooru_copies):  # distinct paths (symlinks) to the 22 real posts
            d = tmp / "dan" / str(k)
            d.mkdir(parents=True, exist_ok=True)
            for p in dan:
                (d / p.name).symlink_to(p)
                links.append(str(d / p.name))
        sets[f"danbooru-512px x{len(links)}"] = links
    return sets


def records_jsonl(path: Path) -> dict[str, dict]:
    return {r["path"]: r for r in map(json.loads, path.read_text().splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=800)
    ap.add_argument("--danbooru-copies", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default="tiny,cnn")
    args = ap.parse_args()

    import ray

    from animetagnet.cli import main as cli
    from animetagnet.distributed import ray_engine
    from animetagnet.engine import TagJob
    from animetagnet.inputs import collect_inputs
    from animetagnet.options import ModelOptions, OutputOptions, TagOptions
    from animetagnet.distributed.shards import read_results
    from modelfactory import build_wd_model

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    models = {}
    if "tiny" in args.models:
        models["tiny-32px"] = str(build_wd_model(tmp / "tiny", size=32))
    if "cnn" in args.models:
        models["efficientnet_b0-320px-500tags"] = str(export_cnn(tmp / "cnn"))
    sets = image_sets(tmp, args.faces, args.danbooru_copies)

    t0 = time.perf_counter()
    from animetagnet.distributed.ray_engine import code_runtime_env

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", runtime_env=code_runtime_env())
    ray_start = time.perf_counter() - t0
    rows = []
    for mname, model in models.items():
        for sname, paths in sets.items():
            lst = tmp / "list.txt"
            lst.write_text("\n".join(paths) + "\n")
            base = ["tag", "--input-list", str(lst), "--model", model, "-q"]
            for rep in range(args.repeats):
                for engine in ("local", "ray"):
                    out = tmp / f"out-{engine}-{len(rows)}"
                    extra = (["--format", "jsonl", "-o", str(out) + ".jsonl"] if engine == "local"
                             else ["--engine", "ray", "-o", str(out)])
                    t = time.perf_counter()
                    if engine == "local":
                        code = cli(base + extra)
                    else:  # the job the CLI builds, run by the same engine, keeping its summary (first_results_s)
                        job = TagJob(inputs=collect_inputs([], list_files=[str(lst)]),
                                     options=TagOptions(model=ModelOptions(model=model)),
                                     output=OutputOptions(output=str(out)), quiet=True)
                        s = ray_engine.run(job)
                        code = 1 if s["failed"] else 0
                    wall = time.perf_counter() - t
                    if code != 0:
                        raise SystemExit(f"{engine} run failed with exit code {code}")
                    rows.append({"model": mname, "images": sname, "n": len(paths), "engine": engine,
                                 "repeat": rep, "seconds": round(wall, 2), "images_per_s": round(len(paths) / wall, 1)})
                    if engine == "ray":
                        rows[-1]["first_results_s"] = s["first_results_s"]
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                    if engine == "ray":
                        local = records_jsonl(Path(str(tmp / f"out-local-{len(rows) - 2}") + ".jsonl"))
                        remote = {r["path"]: r for r in read_results(str(out))}
                        rows[-1]["same_records_as_local"] = remote == local
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    summary = {}
    for r in rows:
        key = f"{r['model']} | {r['images']}"
        summary.setdefault(key, {}).setdefault(r["engine"], []).append(r["images_per_s"])
    for v in summary.values():
        v["ray/local wall (best runs)"] = round(max(v["ray"]) / max(v["local"]), 3)
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "load_average_at_end": os.getloadavg()},
        "ray_start_s": round(ray_start, 2),
        "note": "images_per_s: wall-clock of the whole tag call, model load (+ replica actor start for Ray) "
                "included; first_results_s: when the Ray driver got its first results",
        "summary": summary,
        "runs": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
