"""`animetagnet tag --engine ray`: the same tagging on a Ray cluster (Ray Data, one model replica per actor).

The driver lists what to tag, drops what earlier runs finished, and streams the paths through
`map_batches` to a pool of actors; each actor holds one `Tagger` for its whole life and tags its
batches with the same pipelined `iter_tag_files` as the local engine. Results stream back to
the driver, which commits them to Parquet/JSONL shards (atomically) and caption files (through
the same `CaptionWriter`), so a dead actor only costs a retried batch and a dead driver only the
uncommitted tail, which a restart with --resume tags again.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import pickle
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .replica import TaggerReplica
from .shards import SHARD_FORMATS, ShardBuffer, ShardStore


def add_ray_options(p: argparse.ArgumentParser) -> None:
    """Options of the Ray engine (ignored by the local one, except --manifest)."""
    g = p.add_argument_group("ray engine (--engine ray; see docs/ray.md)")
    g.add_argument("--manifest", action="append", default=[], metavar="URL",
                   help="JSONL, Parquet or text manifest of image paths, local or any fsspec URL (also works locally)")
    g.add_argument("--manifest-column", default=None, metavar="NAME", help="manifest column with the paths (default: path, image, file)")
    g.add_argument("--shard-format", choices=SHARD_FORMATS, default=None,
                   help="result shards written into -o DIR (default parquet; jsonl with --format jsonl)")
    g.add_argument("--shard-rows", type=int, default=10_000, metavar="N", help="records per result shard (default 10000)")
    g.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="model replicas (default: one per GPU, else one per --cpus-per-replica cores)")
    g.add_argument("--cpus-per-replica", type=float, default=None, metavar="N", help="CPU cores reserved per replica (default 2; 1 with a GPU)")
    g.add_argument("--gpus-per-replica", type=float, default=None, metavar="N",
                   help="GPUs per replica (default 1 when the cluster has GPUs and --device is not cpu, else 0)")
    g.add_argument("--ray-batch", type=int, default=None, metavar="N", help="images per Ray task (default: up to 256)")
    g.add_argument("--max-task-retries", type=int, default=3, metavar="N",
                   help="times a batch is retried when its replica dies (default 3)")


@dataclass
class RayTagJob:
    """Everything one distributed run needs; `run()` returns the summary."""

    paths: list[str]
    tagger_kwargs: dict[str, Any]
    thresholds: Any
    tag_filter: Any
    out: str | None = None
    shard_format: str = "parquet"
    shard_rows: int = 10_000
    captions: Any = None  # a CaptionWriter, or None
    resume: bool = False
    overwrite: bool = False
    address: str | None = None
    replicas: int | None = None
    cpus_per_replica: float | None = None
    gpus_per_replica: float | None = None
    ray_batch: int | None = None
    max_task_retries: int = 3
    workers: int | None = None
    progress: bool | None = None
    quiet: bool = False
    replica_cls: type = TaggerReplica
    log: Any = field(default=sys.stderr, repr=False)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"animetagnet: {text}", file=self.log, flush=True)

    # --- what is left to do ---------------------------------------------------
    def todo(self) -> tuple[list[str], int, ShardStore | None]:
        store = ShardStore(self.out, self.shard_format) if self.out else None
        paths = list(dict.fromkeys(self.paths))  # a manifest may list an image twice
        done: set[str] = set()
        if store is not None and store.shards():
            if self.resume:
                dropped = store.drop_failed()
                if dropped:
                    self.say(f"{dropped} images that failed before are tried again (--resume)")
                done = store.done_paths()
            elif self.overwrite:
                self.say(f"removed {store.clear()} earlier shards from {self.out} (--on-existing overwrite)")
            else:
                raise UsageError(f"{self.out} already holds result shards; pass --resume to continue that run "
                                 "or --on-existing overwrite to replace it")
        elif store is None and self.resume and self.captions is not None:
            done = {p for p in paths if self.captions.is_done(p)}
        todo = [p for p in paths if p not in done]
        return todo, len(paths) - len(todo), store

    # --- cluster ----------------------------------------------------------------
    def connect(self):
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=not self.quiet, runtime_env=code_runtime_env())
        return ray

    def plan(self, ray, n: int) -> dict[str, Any]:
        """Replicas and the resources of each, from the options and what the cluster has."""
        res = ray.cluster_resources()
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        device = self.tagger_kwargs.get("device", "auto")
        gpr = self.gpus_per_replica
        if gpr is None:
            gpr = 1.0 if gpus > 0 and device != "cpu" else 0.0
        if gpr > 0 and gpus < gpr:
            raise UsageError(f"--gpus-per-replica {gpr:g} but the Ray cluster has {gpus:g} GPUs")
        cpr = self.cpus_per_replica if self.cpus_per_replica is not None else (1.0 if gpr else min(2.0, max(cpus, 1.0)))
        if cpr > cpus:
            raise UsageError(f"--cpus-per-replica {cpr:g} but the Ray cluster has {cpus:g} CPUs")
        replicas = self.replicas or max(1, int(gpus // gpr) if gpr else int(cpus // cpr) if cpr else 1)
        kwargs = dict(self.tagger_kwargs)
        if gpr == 0 and device == "auto":
            kwargs["device"] = "cpu"  # a replica that reserved no GPU must not take one
        if gpr == 0 and not kwargs.get("threads") and cpr >= 1:
            kwargs["threads"] = int(cpr)  # onnxruntime would otherwise spread over the whole node
        batch = self.ray_batch or max(1, min(256, math.ceil(n / (replicas * 4))))
        return {"replicas": replicas, "cpus": cpr, "gpus": gpr, "batch": batch, "tagger_kwargs": kwargs}

    def _map(self, ray, ds, plan: dict[str, Any]):
        return ds.map_batches(
            self.replica_cls,
            fn_constructor_kwargs={"tagger_kwargs": plan["tagger_kwargs"], "thresholds": self.thresholds,
                                   "tag_filter": self.tag_filter, "workers": self.workers},
            batch_size=plan["batch"],
            compute=ray.data.ActorPoolStrategy(size=plan["replicas"]),
            num_cpus=plan["cpus"],
            num_gpus=plan["gpus"] or None,
            # A dead actor is started again and its batch retried; a batch that keeps killing
            # replicas (e.g. an image that exhausts memory) fails the run after a few tries
            # instead of forever (Ray Data's default).
            max_restarts=-1,
            max_task_retries=self.max_task_retries,
        )

    # --- the run ----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from ..progress import Progress

        todo, skipped, store = self.todo()
        summary: dict[str, Any] = {"images": 0, "failed": 0, "skipped_done": skipped, "seconds": 0.0,
                                   "images_per_s": 0.0, "replicas": 0, "replica_processes": [], "shards": []}
        if not todo:
            self.say(f"nothing to tag: {skipped} images already done" if skipped else "nothing to tag")
            return summary
        ray = self.connect()
        plan = self.plan(ray, len(todo))
        summary["replicas"] = plan["replicas"]
        self.say(f"Ray engine: {plan['replicas']} replica{'s' if plan['replicas'] != 1 else ''} x ({plan['cpus']:g} CPU, {plan['gpus']:g} GPU), "
                 f"batches of {plan['batch']}; {len(todo)} images to tag"
                 + (f", {skipped} already done (--resume)" if skipped else ""))

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts results from the whole cluster
        if self.quiet:
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        # One block per Ray task (the unit a replica gets, and that is retried). from_items builds
        # the blocks in this process; from_arrow would start a metadata task per block, which
        # waits for CPUs that the replicas hold.
        ds = ray.data.from_items([{"path": p} for p in todo],
                                 override_num_blocks=max(1, math.ceil(len(todo) / plan["batch"])))
        with warnings.catch_warnings():
            # Ray Data documents extra keyword arguments as the way to set actor fault tolerance;
            # recent versions warn that this will change, which users cannot act on.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            ds = self._map(ray, ds, plan)
        buffer = ShardBuffer(store, self.shard_rows) if store is not None else None
        progress = Progress(len(todo), enabled=False if self.quiet else self.progress)
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
                    if error is None and self.captions is not None:
                        error = self.captions.write(result)
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
        extra = f"Ray, {plan['replicas']} replica{'s' if plan['replicas'] != 1 else ''} on {', '.join(devices) or '?'}"
        if first is not None:  # start-up (actors, model loads) is paid once per run
            extra += f"; first results after {first:.1f} s"
        if buffer is not None:
            extra += f"; {len(buffer.shards)} shard{'s' if len(buffer.shards) != 1 else ''} in {self.out}"
        kept = getattr(self.captions, "skipped_existing", 0)
        if kept:
            extra += f"; {kept} existing captions left as they were (--on-existing skip)"
        self.say(progress.summary(extra))
        return summary


def code_runtime_env() -> dict[str, Any]:
    """Replicas must run this very animetagnet (results travel as pickled TagResults), not whatever
    version a node has installed: Ray uploads the driver's package once per job."""
    return {"py_modules": [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]}


def job_from_args(args, found, fmt: str, thresholds, tag_filter, style) -> RayTagJob:
    """Map the tag verb's options onto a RayTagJob (the same options mean the same thing)."""
    from ..outputs import CaptionWriter

    if fmt not in ("txt", "jsonl") and args.format is not None:
        raise UsageError(f"--engine ray writes result shards (-o DIR, Parquet or JSONL) and/or caption files "
                         f"(--format txt), not --format {fmt}")
    if fmt != "txt" and not args.output:
        raise UsageError("--engine ray needs -o DIR for its result shards (a local directory or an fsspec URL)")
    if args.output and args.output.lower().endswith((".jsonl", ".json", ".csv", ".parquet", ".txt")):
        raise UsageError(f"-o {args.output}: --engine ray writes a directory of shards; give a directory (-o DIR)")
    shard_format = args.shard_format or ("jsonl" if args.format == "jsonl" else "parquet")
    captions = None
    if fmt == "txt":
        captions = CaptionWriter(style, extension=args.caption_extension, on_existing=args.on_existing,
                                 output_dir=args.output_dir, roots=found.roots)
    return RayTagJob(
        paths=list(found.paths),
        tagger_kwargs={"model": args.model, "device": args.device, "threads": args.threads,
                       "batch_size": args.batch_size, "exact": args.exact, "max_pixels": args.max_pixels},
        thresholds=thresholds,
        tag_filter=tag_filter,
        out=args.output,
        shard_format=shard_format,
        shard_rows=args.shard_rows,
        captions=captions,
        resume=args.resume,
        overwrite=args.on_existing == "overwrite",
        address=args.ray_address,
        replicas=args.replicas,
        cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica,
        ray_batch=args.ray_batch,
        max_task_retries=args.max_task_retries,
        workers=args.workers,
        progress=False if args.no_progress else None,
        quiet=args.quiet,
    )


def run_ray_tagging(args, found, fmt: str, thresholds, tag_filter, style) -> int:
    """Entry point from the tag verb; exit code 0 all tagged, 1 some failed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'animetagnet[ray]'") from None
    job = job_from_args(args, found, fmt, thresholds, tag_filter, style)
    if args.ray_address is None and args.model is not None:
        from ..bundle import ModelBundle

        ModelBundle.load(args.model)  # fail fast with a clear message, before starting Ray
    if style.sort == "model":  # captions are written here, in the driver: it needs the label order
        from ..bundle import ModelBundle

        style.use_label_order(ModelBundle.load(args.model).vocab.names)
    summary = job.run()
    return 1 if summary["failed"] or found.missing else 0
