"""Result shards and manifests of the Ray engine (no Ray needed): exact round trips, atomic
commits, resume bookkeeping, manifest formats; CLI option checks that fail before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from animetagnet.errors import UsageError
from animetagnet.inputs import InputSet

pa = pytest.importorskip("pyarrow")
pytest.importorskip("fsspec")

from animetagnet.distributed.manifest import add_manifests, read_manifest  # noqa: E402
from animetagnet.distributed.shards import ShardBuffer, ShardStore, read_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

RECORDS = [
    {"path": "a/1.jpg", "rating": "general", "ratings": {"general": 0.91, "sensitive": 0.05},
     "tags": {"general": {"smile": 0.9876, "^_^": 0.5, "long_hair": 0.4}, "character": {"irys_(hololive)": 0.88}}},
    {"path": "a/2.jpg", "error": "not an image (cannot identify image file)"},
    {"path": "b/ü 3.png", "rating": "explicit", "ratings": {"explicit": 0.6},
     "tags": {"general": {}, "character": {}}},
]


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_shards_round_trip_exact_records(tmp_path, fmt):
    store = ShardStore(str(tmp_path / "out"), fmt)
    buf = ShardBuffer(store, rows=2, run_id="r1")
    for r in RECORDS:
        buf.add(r)
    assert len(buf.shards) == 1  # committed after 2 rows, the third still pending
    buf.flush()
    assert buf.shards == [f"part-r1-000000.{fmt}", f"part-r1-000001.{fmt}"]
    back = list(read_results(str(tmp_path / "out")))
    assert back == RECORDS
    # key order too: the shards hold what the local engine's JSONL holds, byte for byte
    assert [json.dumps(r) for r in back] == [json.dumps(r) for r in RECORDS]
    assert store.done_paths() == {"a/1.jpg", "b/ü 3.png"}


def test_temporary_and_foreign_files_are_not_results(tmp_path):
    store = ShardStore(str(tmp_path), "parquet")
    store.write_shard("r-000000", RECORDS[:1])
    (tmp_path / ".part-r-000001.parquet.abc.tmp").write_bytes(b"PAR1 half a shard")  # a killed write
    (tmp_path / "notes.jsonl").write_text('{"path": "x"}\n')
    assert [Path(p).name for p in store.shards()] == ["part-r-000000.parquet"]
    assert store.done_paths() == {"a/1.jpg"}


def test_drop_failed_keeps_good_records_and_removes_empty_shards(tmp_path):
    store = ShardStore(str(tmp_path), "jsonl")
    store.write_shard("r-000000", RECORDS)
    store.write_shard("r-000001", [RECORDS[1]])
    assert store.drop_failed() == 2
    assert [Path(p).name for p in store.shards()] == ["part-r-000000.jsonl"]
    assert [r["path"] for r in store.records()] == ["a/1.jpg", "b/ü 3.png"]


def test_store_refuses_a_file(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("")
    with pytest.raises(UsageError, match="is a file"):
        ShardStore(str(f))


def test_manifest_jsonl_relative_to_manifest_dir(tmp_path):
    m = tmp_path / "sub" / "train.jsonl"
    m.parent.mkdir()
    m.write_text('{"id": "1", "image": "img/1.jpg", "tags": []}\n\n{"id": "2", "image": "/abs/2.jpg"}\n')
    assert read_manifest(str(m)) == [str(tmp_path / "sub" / "img" / "1.jpg"), "/abs/2.jpg"]
    found = InputSet()
    add_manifests(found, [str(m)])
    assert found.roots[str(tmp_path / "sub" / "img" / "1.jpg")] == str(tmp_path / "sub")
    with pytest.raises(UsageError, match="no column 'file'"):
        read_manifest(str(m), "file")


def test_manifest_parquet_gzip_and_text(tmp_path):
    import gzip

    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2], "path": ["/d/1.jpg", "/d/2.jpg"]}), tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet")) == ["/d/1.jpg", "/d/2.jpg"]
    # fsspec URLs work the same (here the local file:// protocol)
    assert read_manifest("file://" + str(tmp_path / "m.parquet")) == ["/d/1.jpg", "/d/2.jpg"]
    with gzip.open(tmp_path / "m.jsonl.gz", "wt") as fh:
        fh.write('{"path": "/d/3.jpg"}\n')
    assert read_manifest(str(tmp_path / "m.jsonl.gz")) == ["/d/3.jpg"]
    (tmp_path / "list.txt").write_text("# comment\n/d/4.jpg\n\n")
    assert read_manifest(str(tmp_path / "list.txt")) == ["/d/4.jpg"]
    with pytest.raises(UsageError, match="no such file"):
        read_manifest(str(tmp_path / "missing.jsonl"))


def _cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "animetagnet", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_ray_engine_option_errors_before_starting_ray(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    r = _cli("tag", str(img), "--engine", "ray")
    assert r.returncode == 2 and "needs -o DIR" in r.stderr
    r = _cli("tag", str(img), "--engine", "ray", "--format", "csv", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "not --format csv" in r.stderr
    r = _cli("tag", str(img), "--engine", "ray", "-o", str(tmp_path / "tags.jsonl"))
    assert r.returncode == 2 and "give a directory" in r.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "tags.jsonl").exists()


def test_local_engine_reads_manifests_too(tmp_path):
    from modelfactory import build_wd_model

    model = build_wd_model(tmp_path / "model")
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "m.jsonl").write_text('{"path": "imgs/a.png"}\n{"path": "imgs/missing.png"}\n')
    r = _cli("tag", "--manifest", str(tmp_path / "m.jsonl"), "--model", str(model), "--format", "jsonl", "-q")
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1  # one listed image does not exist: reported, as for any input
    assert [Path(x["path"]).name for x in recs] == ["a.png", "missing.png"]
    assert "error" not in recs[0] and "error" in recs[1]


def test_replica_tags_like_the_local_tagger_urls_included(tmp_path):
    """The actor class is plain Python: check it without Ray, fsspec URLs and failures included."""
    import pickle

    import numpy as np
    from modelfactory import build_wd_model
    from PIL import Image

    from animetagnet.formatting import TagFilter
    from animetagnet.options import ModelOptions
    from animetagnet.postprocess import ThresholdOptions
    from animetagnet.distributed.replica import TaggerReplica
    from animetagnet.tagger import Tagger

    model = str(build_wd_model(tmp_path / "model"))
    for i, colour in enumerate([(250, 20, 20), (20, 20, 250)]):
        Image.new("RGB", (50 + i, 40), colour).save(tmp_path / f"{i}.png")
    url = "file://" + str(tmp_path / "1.png")
    paths = [str(tmp_path / "0.png"), url, "file://" + str(tmp_path / "gone.png"), str(tmp_path / "gone.png")]
    flt = TagFilter(exclude={"smile"})
    replica = TaggerReplica(ModelOptions(model=model, device="cpu"), ThresholdOptions(), flt)
    out = replica({"path": np.array(paths, dtype=object)})
    got = [pickle.loads(b) for b in out["result"]]
    assert [r.path for r in got] == paths
    ref = Tagger(model, device="cpu")
    assert got[0].to_dict() == flt.apply(ref.tag(str(tmp_path / "0.png"))).to_dict()
    want = flt.apply(ref.tag(str(tmp_path / "1.png"))).to_dict()
    want["path"] = url
    assert got[1].to_dict() == want
    assert got[2].error.startswith("cannot read") and got[3].error
    assert "smile" not in got[0].general


def test_base_install_needs_no_ray_pyarrow_or_fsspec(tmp_path):
    """With ray, pyarrow and fsspec unimportable the CLI still works, and --engine ray says what to install."""
    code = r"""
import sys
for name in ("ray", "pyarrow", "fsspec"):
    sys.modules[name] = None  # import fails as if not installed
from animetagnet.cli import build_parser, main
build_parser().parse_args(["tag", "x.jpg"])
sys.exit(main(["tag", sys.argv[1], "--engine", "ray", "-o", sys.argv[2]]))
"""
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, "-c", code, str(img), str(tmp_path / "out")], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "needs Ray: pip install 'animetagnet[ray]'" in r.stderr


class _FakeRay:
    def __init__(self, resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


@pytest.mark.parametrize("resources, options, expected", [
    # CPU nodes: one replica per 2 cores, onnxruntime limited to the cores it reserved, never CUDA
    ({"CPU": 16.0}, {}, {"replicas": 8, "cpus": 2.0, "gpus": 0.0, "device": "cpu", "threads": 2}),
    ({"CPU": 2.0}, {}, {"replicas": 1, "cpus": 2.0, "gpus": 0.0, "device": "cpu", "threads": 2}),
    # GPU nodes: one replica per GPU, device left to auto (CUDA when onnxruntime-gpu works)
    ({"CPU": 32.0, "GPU": 4.0}, {}, {"replicas": 4, "cpus": 1.0, "gpus": 1.0, "device": "auto", "threads": None}),
    ({"CPU": 32.0, "GPU": 4.0}, {"gpus_per_replica": 0.5}, {"replicas": 8, "gpus": 0.5}),
    ({"CPU": 32.0, "GPU": 4.0}, {"device": "cpu", "cpus_per_replica": 4}, {"replicas": 8, "gpus": 0.0, "threads": 4}),
    ({"CPU": 8.0}, {"replicas": 3, "cpus_per_replica": 1}, {"replicas": 3, "cpus": 1.0, "threads": 1}),
])
def test_replica_plan(resources, options, expected):
    from animetagnet.distributed.ray_engine import plan as make_plan
    from animetagnet.engine import TagJob
    from animetagnet.inputs import InputSet
    from animetagnet.options import ModelOptions, RayOptions, TagOptions

    device = options.pop("device", "auto")
    job = TagJob(inputs=InputSet(), options=TagOptions(model=ModelOptions(model="m", device=device)),
                 ray=RayOptions(**options))
    plan = make_plan(job, _FakeRay(resources), n=10_000)
    got = {"replicas": plan["replicas"], "cpus": plan["cpus"], "gpus": plan["gpus"],
           "device": plan["model"].device, "threads": plan["model"].threads}
    assert {k: got[k] for k in expected} == expected
    assert plan["batch"] == min(256, -(-10_000 // (plan["replicas"] * 4)))


def test_replica_plan_refuses_what_the_cluster_lacks():
    from animetagnet.distributed.ray_engine import plan
    from animetagnet.engine import TagJob
    from animetagnet.inputs import InputSet
    from animetagnet.options import RayOptions

    job = TagJob(inputs=InputSet(), ray=RayOptions(gpus_per_replica=1))
    with pytest.raises(UsageError, match="has 0 GPUs"):
        plan(job, _FakeRay({"CPU": 4.0}), n=10)
    job = TagJob(inputs=InputSet(), ray=RayOptions(cpus_per_replica=8))
    with pytest.raises(UsageError, match="has 4 CPUs"):
        plan(job, _FakeRay({"CPU": 4.0}), n=10)
