"""The Ray engine on a local Ray instance: same records and captions as the local engine on real
images, a killed replica loses nothing, a killed run restarts where it stopped."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the `ray` extra")
pytest.importorskip("pyarrow")

from animetagnet.cli import main  # noqa: E402
from animetagnet.distributed.shards import read_results  # noqa: E402
from modelfactory import build_wd_model  # noqa: E402
from ray_faults import FLAG_ENV, CrashOnceReplica  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ANIMETAGNET_DATA", ROOT.parent / "shared" / "data"))
DANBOORU = DATA / "danbooru-512px"
FACES = DATA / "faces"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DANBOORU.is_dir(), reason=f"real images not found at {DANBOORU} (set ANIMETAGNET_DATA)"),
]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """One local Ray instance for the whole module (starting one costs seconds on 2 cores)."""
    flag = tmp_path_factory.mktemp("crash") / "flag"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", FLAG_ENV)}
    # Workers inherit the driver's environment: they import animetagnet and the fault module.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]
                                               + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ[FLAG_ENV] = str(flag)
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield {"flag": flag, "address": ray.get_runtime_context().gcs_address}
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(build_wd_model(tmp_path_factory.mktemp("model") / "tiny", size=32))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The 22 real Danbooru images plus one broken file (a failure must be recorded alike)."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = sorted(str(p) for p in DANBOORU.rglob("*.jpg")) + [str(d / "broken.jpg")]
    lst = d / "list.txt"
    lst.write_text("\n".join(paths) + "\n")
    return {"list": str(lst), "paths": paths}


OPTIONS = ["--general-threshold", "0.5", "--exclude", "smile", "--spaces", "--include-rating", "-q"]


def _job(model, paths, out, **ray):
    """The Ray job of `tag --input-list ... OPTIONS --engine ray -o out`, built in Python."""
    from animetagnet.engine import TagJob
    from animetagnet.inputs import collect_inputs
    from animetagnet.options import (CaptionOptions, FilterOptions, ModelOptions, OutputOptions, RayOptions,
                                     TagOptions, ThresholdOptions)

    options = TagOptions(model=ModelOptions(model=model), thresholds=ThresholdOptions(general=0.5),
                         filters=FilterOptions(exclude=("smile",)),
                         caption=CaptionOptions(spaces=True, include_rating=True))
    resume = ray.pop("resume", False)
    return TagJob(inputs=collect_inputs([], list_files=[paths]), options=options,
                  output=OutputOptions(output=str(out), resume=resume), ray=RayOptions(**ray), quiet=True)


def _local(model, inputs, *extra):
    return main(["tag", "--input-list", inputs["list"], "--model", model, *OPTIONS, *extra])


def _by_path(records):
    out = {}
    for r in records:
        assert r["path"] not in out, f"{r['path']} recorded twice"
        out[r["path"]] = r
    return out


def test_same_records_and_captions_as_local_engine(ray_cluster, model, inputs, tmp_path):
    assert _local(model, inputs, "--format", "jsonl", "-o", str(tmp_path / "local.jsonl")) == 1  # the broken file
    assert _local(model, inputs, "--format", "txt", "--output-dir", str(tmp_path / "local_caps")) == 1
    code = main(["tag", "--input-list", inputs["list"], "--model", model, *OPTIONS, "--engine", "ray",
                 "--replicas", "2", "--cpus-per-replica", "1", "--format", "txt",
                 "--output-dir", str(tmp_path / "ray_caps"), "-o", str(tmp_path / "shards")])
    assert code == 1
    local = _by_path(json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines())
    remote = _by_path(read_results(str(tmp_path / "shards")))
    assert len(local) == len(inputs["paths"]) == 23
    assert remote == local  # every image: same rating, tags, confidences, same error record
    assert "error" in remote[inputs["paths"][-1]]
    assert any("error" not in r and r["tags"]["general"] for r in remote.values())  # something was tagged
    caps = sorted(p.relative_to(tmp_path / "local_caps") for p in (tmp_path / "local_caps").rglob("*.txt"))
    assert len(caps) == 22
    assert sorted(p.relative_to(tmp_path / "ray_caps") for p in (tmp_path / "ray_caps").rglob("*.txt")) == caps
    for c in caps:
        assert (tmp_path / "ray_caps" / c).read_text() == (tmp_path / "local_caps" / c).read_text()


def test_killed_replica_loses_no_results(ray_cluster, model, inputs, tmp_path):
    from animetagnet.distributed.ray_engine import run

    flag = ray_cluster["flag"]
    Path(str(flag) + ".armed").write_text("")
    job = _job(model, inputs["list"], tmp_path / "out", replicas=2, cpus_per_replica=1, ray_batch=4, shard_rows=5)
    try:
        summary = run(job, replica_cls=CrashOnceReplica)
    finally:
        os.unlink(str(flag) + ".armed")
    fired = Path(str(flag) + ".fired")
    assert fired.exists(), "the fault was never injected"
    assert summary["images"] == 23 and summary["failed"] == 1
    records = _by_path(read_results(str(tmp_path / "out")))  # asserts no image twice
    assert sorted(records) == sorted(inputs["paths"])
    assert _local(model, inputs, "--format", "jsonl", "-o", str(tmp_path / "local.jsonl")) == 1
    local = _by_path(json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines())
    assert records == local
    # the replica that died had a process id; a fresh process finished its batch
    dead_pid = fired.read_text().split()[0]
    assert all(not p.split(" ")[0].endswith(f":{dead_pid}") for p in summary["replica_processes"])


@pytest.mark.skipif(not FACES.is_dir(), reason=f"faces images not found at {FACES}")
def test_killed_run_restarts_where_it_stopped(ray_cluster, model, tmp_path):
    paths = sorted(str(p) for p in FACES.rglob("*.jpg"))[:300]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(paths) + "\n")
    out = tmp_path / "out"
    common = ["tag", "--input-list", str(lst), "--model", model, "-q", "--engine", "ray", "-o", str(out),
              "--replicas", "1", "--cpus-per-replica", "1", "--ray-batch", "5", "--shard-rows", "20"]
    # A separate driver process on the same cluster, killed hard (no cleanup) once it has
    # committed some shards.
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "animetagnet", *common, "--ray-address",
                             ray_cluster["address"]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("part-*"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = _by_path(read_results(str(out)))
    assert 0 < len(committed) < len(paths)
    # Without --resume the tool refuses to touch the earlier results.
    assert main(common) == 2
    from animetagnet.distributed.ray_engine import run
    from animetagnet.engine import TagJob
    from animetagnet.inputs import collect_inputs
    from animetagnet.options import ModelOptions, OutputOptions, RayOptions, TagOptions

    job = TagJob(inputs=collect_inputs([], list_files=[str(lst)]), options=TagOptions(model=ModelOptions(model=model)),
                 output=OutputOptions(output=str(out), resume=True),
                 ray=RayOptions(replicas=1, cpus_per_replica=1, ray_batch=5, shard_rows=20), quiet=True)
    summary = run(job)
    assert summary["skipped_done"] == len(committed)
    assert summary["images"] == len(paths) - len(committed)
    final = _by_path(read_results(str(out)))
    assert sorted(final) == sorted(paths)
    for p, rec in committed.items():
        assert final[p] == rec
