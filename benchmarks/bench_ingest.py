"""Ingestion benchmark: metadata posts/s, images/s when hashing/checking images, peak memory.

Each measurement runs in a fresh Python process and reports its wall time, CPU time and
peak resident memory (getrusage ru_maxrss), so numbers do not leak between runs. Prints one
JSON object per measurement, then a summary object.

    PYTHONPATH=src python benchmarks/bench_ingest.py --posts 300000 --images 3000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("ANIMETAGNET_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(HERE))


def child(kind: str, source: str, out: str, extra: list[str]) -> dict:
    """Runs inside the measured process."""
    sys.path.insert(0, str(REPO / "src"))
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "reader":
        from animetagnet.datasets.danbooru import iter_posts
        from animetagnet.datasets.records import SkipLog

        log = SkipLog()
        n = sum(1 for _ in iter_posts([Path(source)], log))
        result = {"posts": n, "skipped": log.total()}
        count = n
    else:
        from animetagnet.datasets import cli as dcli
        from animetagnet.datasets.prepare import prepare_dataset
        from animetagnet.cli import build_parser

        args = build_parser().parse_args(["prepare", source, "--out", out, "--overwrite", "-q", *extra])
        opts = dcli.options_from_args(args)
        info = prepare_dataset(opts)
        count = info["counts"]["records_read"]
        t = info["timings"]
        result = {"records_read": count, "records_kept": info["counts"]["records_kept"],
                  "vocabulary": info["counts"]["vocabulary"], "phases_s": t,
                  "read_pass_per_s": round(count / t["read_s"], 1) if t["read_s"] else None}
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    result.update(wall_s=round(wall, 2), cpu_s=round(cpu, 2), per_s_wall=round(count / wall, 1),
                  per_s_cpu=round(count / cpu, 1),
                  peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return result


def measure(name: str, kind: str, source: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(source), str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    if res.returncode != 0:
        raise SystemExit(f"{name} failed:\n{res.stderr}")
    result = {"name": name, **json.loads(res.stdout.strip().splitlines()[-1])}
    print(json.dumps(result), flush=True)
    return result


def head_lines(src: Path, dst: Path, n: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for i, line in enumerate(fi):
            if i >= n:
                break
            fo.write(line)


def build_image_layout(meta: Path, root: Path, n_images: int, kind: str) -> None:
    """A Kaggle layout: the first `n_images` posts of `meta` get image files in gwern buckets.

    kind '128px-faces': the real 128px face crops (distinct files). '512px-posts': the real 512px
    Danbooru posts, each copy made distinct by bytes appended after the JPEG end marker
    (decoders ignore them), so every file hashes differently and decodes at 512px cost.
    """
    if root.exists():
        shutil.rmtree(root)
    mdir = root / "danbooru-metadata" / "danbooru-metadata"
    idir = root / "danbooru-images" / "danbooru-images"
    mdir.mkdir(parents=True)
    ids = []
    with open(meta, "rb") as fi, open(mdir / "201700.json", "wb") as fo:
        for line in fi:
            fo.write(line)
            try:
                ids.append(int(json.loads(line)["id"]))
            except ValueError:
                continue
            if len(ids) >= n_images:
                break
    if kind.endswith("faces"):
        pool = sorted((DATA / "faces").rglob("*.jpg"))
    else:
        pool = sorted((DATA / "danbooru-512px").rglob("*.jpg"))
    for i, pid in enumerate(ids):
        bucket = idir / f"{pid % 1000:04d}"
        bucket.mkdir(parents=True, exist_ok=True)
        data = pool[i % len(pool)].read_bytes()
        if not kind.endswith("faces") or i >= len(pool):
            data += b"animetagnet-bench-%d" % i
        (bucket / f"{pid}.jpg").write_bytes(data)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, source, out, *extra = sys.argv[2:]
        print(json.dumps(child(kind, source, out, extra)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=300_000)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/animetagnet-bench-ingest"))
    ap.add_argument("--skip", default="", help="comma-separated measurement names to skip")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    from gen_metadata import generate

    w = args.workdir
    meta = w / f"meta{args.posts}" / "201700.json"
    if not meta.exists():
        t0 = time.perf_counter()
        g = generate(args.posts, meta)
        g["generate_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"name": "generate", **g}), flush=True)
    results = []
    if "reader" not in skip:
        results.append(measure("reader", "reader", meta, w / "unused"))
    if "metadata" not in skip:
        third = w / f"meta{args.posts // 3}" / "201700.json"
        head_lines(meta, third, args.posts // 3)
        results.append(measure("metadata-only prepare (1/3 of the posts)", "prepare", third.parent, w / "ds_meta_third",
                               "--metadata-only", "--ratings"))
        results.append(measure("metadata-only prepare", "prepare", meta.parent, w / "ds_meta", "--metadata-only", "--ratings"))
    for kind in ("128px-faces", "512px-posts"):
        if f"images-{kind}" in skip:
            continue
        root = w / f"kaggle_{kind}"
        build_image_layout(meta, root, args.images, kind)
        for verify in ("header", "full"):
            results.append(measure(f"kaggle layout, {kind} images, verify {verify}", "prepare", root,
                                   w / f"ds_{kind}_{verify}", "--verify", verify, "--min-count", "5"))
    print(json.dumps({"summary": results, "cpus": os.cpu_count(),
                      "loadavg_1m": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
