"""`animetagnet tag --engine ray`: the same tagging on a Ray cluster (Ray Data, one model replica per actor).

`run(job) -> summary` takes the same `TagJob` as the local engine (engine.py); the Ray-only
settings are the job's `RayOptions`.

The driver lists what to tag, drops what earlier runs finished, and streams the paths through
`map_batches` to a pool of actors; each actor holds one `Tagger` for its whole life and tags its
batches with the same pipelined `iter_tag_files` as the local engine. Results stream back to
the driver, which commits them to Parquet/JSONL shards (atomically) and caption files (through
the same `CaptionWriter`), so a dead actor only costs a retried batch and a dead driver only the
uncommitted tail, which a restart with --resume tags again.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import warnings
from typing import Any

from ..engine import TagJob
from ..errors import UsageError
from ..inputs import resume_key, resume_keys
from .replica import TaggerReplica
from .shards import ShardBuffer, ShardStore


def check(job: TagJob) -> None:
    """What the Ray engine can write: result shards in a directory and/or caption files."""
    fmt, out = job.format, job.output
    if fmt not in ("txt", "jsonl") and out.format is not None:
        raise UsageError(f"--engine ray writes result shards (-o DIR, Parquet or JSONL) and/or caption files "
                         f"(--format txt), not --format {fmt}")
    if fmt != "txt" and not out.output:
        raise UsageError("--engine ray needs -o DIR for its result shards (a local directory or an fsspec URL)")
    if out.output and out.output.lower().endswith((".jsonl", ".json", ".csv", ".parquet", ".txt")):
        raise UsageError(f"-o {out.output}: --engine ray writes a directory of shards; give a directory (-o DIR)")


def shard_format(job: TagJob) -> str:
    return job.ray.shard_format or ("jsonl" if job.output.format == "jsonl" else "parquet")


def todo(job: TagJob, captions) -> tuple[list[str], int, ShardStore | None]:
    """What is left to do: the job's paths minus what earlier runs finished (--resume)."""
    out = job.output.output
    store = ShardStore(out, shard_format(job)) if out else None
    paths = list(dict.fromkeys(job.inputs.paths))  # a manifest may list an image twice
    done: set[str] = set()
    if store is not None and store.shards():
        if job.output.resume:
            dropped = store.drop_failed()
            if dropped:
                job.say(f"{dropped} images that failed before are tried again (--resume)")
            done = resume_keys(store.done_paths())  # the real folder: a path's spelling never tags it twice
        elif job.output.on_existing == "overwrite":
            job.say(f"removed {store.clear()} earlier shards from {out} (--on-existing overwrite)")
        else:
            raise UsageError(f"{out} already holds result shards; pass --resume to continue that run "
                             "or --on-existing overwrite to replace it")
    elif store is None and job.output.resume and captions is not None:
        done = resume_keys(p for p in paths if captions.is_done(p))
    dirs: dict[str, str] = {}
    left = [p for p in paths if resume_key(p, dirs) not in done]
    if store is not None and left:
        store.check_writable()
    return left, len(paths) - len(left), store


def connect(job: TagJob):
    import ray

    if not ray.is_initialized():
        ray.init(address=job.ray.address, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=not job.quiet, runtime_env=code_runtime_env())
    return ray


def plan(job: TagJob, ray, n: int) -> dict[str, Any]:
    """Replicas and the resources of each, from the options and what the cluster has; `model` is
    the ModelOptions each replica loads (a CPU replica never takes a GPU or the whole node)."""
    r, model = job.ray, job.options.model
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    gpr = r.gpus_per_replica
    if gpr is None:
        gpr = 1.0 if gpus > 0 and model.device != "cpu" else 0.0
    if gpr > 0 and gpus < gpr:
        raise UsageError(f"--gpus-per-replica {gpr:g} but the Ray cluster has {gpus:g} GPUs")
    cpr = r.cpus_per_replica if r.cpus_per_replica is not None else (1.0 if gpr else min(2.0, max(cpus, 1.0)))
    if cpr > cpus:
        raise UsageError(f"--cpus-per-replica {cpr:g} but the Ray cluster has {cpus:g} CPUs")
    replicas = r.replicas or max(1, int(gpus // gpr) if gpr else int(cpus // cpr) if cpr else 1)
    if gpr == 0 and model.device == "auto":
        model = model.replace(device="cpu")  # a replica that reserved no GPU must not take one
    if gpr == 0 and not model.threads and cpr >= 1:
        model = model.replace(threads=int(cpr))  # onnxruntime would otherwise spread over the whole node
    batch = r.ray_batch or max(1, min(256, math.ceil(n / (replicas * 4))))
    return {"replicas": replicas, "cpus": cpr, "gpus": gpr, "batch": batch, "model": model}


def _map(job: TagJob, ray, ds, plan: dict[str, Any], tag_filter, replica_cls):
    return ds.map_batches(
        replica_cls,
        fn_constructor_kwargs={"model": plan["model"], "thresholds": job.options.thresholds, "tag_filter": tag_filter},
        batch_size=plan["batch"],
        compute=ray.data.ActorPoolStrategy(size=plan["replicas"]),
        num_cpus=plan["cpus"],
        num_gpus=plan["gpus"] or None,
        # A dead actor is started again and its batch retried; a batch that keeps killing
        # replicas (e.g. an image that exhausts memory) fails the run after a few tries
        # instead of forever (Ray Data's default).
        max_restarts=-1,
        max_task_retries=job.ray.max_task_retries,
    )


def run(job: TagJob, *, replica_cls: type = TaggerReplica) -> dict[str, Any]:
    """Tag the job on a Ray cluster; the summary has the local engine's keys and the replicas'."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'animetagnet[ray]'") from None
    from ..outputs import CaptionWriter
    from ..progress import Progress

    check(job)
    out = job.output
    tag_filter = job.options.filters.build()  # built once here: replicas need no implication file
    captions = None
    if job.format == "txt":
        captions = CaptionWriter(job.options.caption.style(), extension=out.caption_extension,
                                 on_existing=out.on_existing, output_dir=out.output_dir, roots=job.inputs.roots,
                                 name=out.caption_name)
        captions.check_collisions(job.inputs.paths)
    if job.ray.address is None and job.options.model.model is not None:
        from ..bundle import ModelBundle

        bundle = ModelBundle.load(job.options.model.model)  # fail fast with a clear message, before starting Ray
        if captions is not None:  # captions are written here, in the driver: --sort model needs the label order
            captions.style.use_label_order(bundle.vocab.names)
    left, skipped, store = todo(job, captions)
    summary: dict[str, Any] = {"images": 0, "failed": 0, "skipped_done": skipped, "seconds": 0.0,
                               "images_per_s": 0.0, "replicas": 0, "replica_processes": [], "shards": []}
    if not left:
        job.say(f"nothing to tag: {skipped} images already done" if skipped else "nothing to tag")
        return summary
    ray = connect(job)
    p = plan(job, ray, len(left))
    summary["replicas"] = p["replicas"]
    job.say(f"Ray engine: {p['replicas']} replica{'s' if p['replicas'] != 1 else ''} x ({p['cpus']:g} CPU, {p['gpus']:g} GPU), "
            f"batches of {p['batch']}; {len(left)} images to tag"
            + (f", {skipped} already done (--resume)" if skipped else ""))

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts results from the whole cluster
    if job.quiet:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    # One block per Ray task (the unit a replica gets, and that is retried). from_items builds
    # the blocks in this process; from_arrow would start a metadata task per block, which
    # waits for CPUs that the replicas hold.
    ds = ray.data.from_items([{"path": path} for path in left],
                             override_num_blocks=max(1, math.ceil(len(left) / p["batch"])))
    with warnings.catch_warnings():
        # Ray Data documents extra keyword arguments as the way to set actor fault tolerance;
        # recent versions warn that this will change, which users cannot act on.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = _map(job, ray, ds, p, tag_filter, replica_cls)
    buffer = ShardBuffer(store, job.ray.shard_rows) if store is not None else None
    progress = Progress(len(left), enabled=False if job.quiet else job.progress, stream=job.log)
    seen: set[str] = set()
    first: float | None = None  # seconds until the first results arrived
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if first is None:
                first = progress.elapsed
            failed = 0
            for blob in batch["result"]:
                result = pickle.loads(blob)
                error = result.error
                if buffer is not None:
                    buffer.add(result.to_dict())
                if error is None and captions is not None:
                    error = captions.write(result)
                if error is not None:
                    failed += 1
                    progress.stream.write(("\n" if progress.enabled else "")
                                          + f"animetagnet: skipped {result.path}: {error}\n")
            seen.update(str(r) for r in batch["replica"])
            progress.update(len(batch["result"]), failed=failed)
    finally:
        if buffer is not None:
            buffer.flush()  # results that reached the driver are never lost, even on Ctrl-C
        progress.close()
    summary.update(images=progress.done, failed=progress.failed, seconds=round(progress.elapsed, 3),
                   images_per_s=round(progress.done / max(progress.elapsed, 1e-9), 2),
                   first_results_s=round(first, 3) if first is not None else None,
                   replica_processes=sorted(seen), shards=buffer.shards if buffer else [])
    devices = sorted({s.split(" ", 1)[1] for s in seen})
    extra = f"Ray, {p['replicas']} replica{'s' if p['replicas'] != 1 else ''} on {', '.join(devices) or '?'}"
    if first is not None:  # start-up (actors, model loads) is paid once per run
        extra += f"; first results after {first:.1f} s"
    if buffer is not None:
        extra += f"; {len(buffer.shards)} shard{'s' if len(buffer.shards) != 1 else ''} in {out.output}"
    kept = getattr(captions, "skipped_existing", 0)
    if kept:
        extra += f"; {kept} existing captions left as they were (--on-existing skip)"
    job.say(progress.summary(extra))
    return summary


def code_runtime_env() -> dict[str, Any]:
    """Replicas must run this very animetagnet (results travel as pickled TagResults), not whatever
    version a node has installed: Ray uploads the driver's package once per job."""
    return {"py_modules": [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]}
