"""A tagging run as data (`TagJob`) and the local engine that runs it: `run(job) -> summary`.

The Ray engine (distributed/ray_engine.py) has the same `run(job) -> summary` shape and takes
the same job, so the `tag` verb only parses, builds the job and picks an engine. A summary is
a dict with at least `images`, `failed`, `skipped_done`, `seconds` and `images_per_s`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from .errors import UsageError
from .inputs import InputSet
from .options import OutputOptions, RayOptions, TagOptions


@dataclass
class TagJob:
    """What to tag, with which options, and where the results go."""

    inputs: InputSet
    options: TagOptions = TagOptions()
    output: OutputOptions = OutputOptions()
    ray: RayOptions = RayOptions()
    #: Progress line: None on a terminal only, False never.
    progress: bool | None = None
    quiet: bool = False
    #: Where messages go (None: standard error at the time of writing).
    log: IO[str] | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, inputs: InputSet) -> "TagJob":
        return cls(inputs=inputs, options=TagOptions.from_args(args), output=OutputOptions.from_args(args),
                   ray=RayOptions.from_args(args), progress=False if args.no_progress else None, quiet=args.quiet)

    @property
    def format(self) -> str:
        """The output format: as asked, else a table on a terminal and JSON Lines when piped."""
        return self.output.format or ("table" if sys.stdout.isatty() and not self.output.output else "jsonl")

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"animetagnet: {text}", file=self.log or sys.stderr, flush=True)


def run(job: TagJob) -> dict[str, Any]:
    """Tag the job's images with threads in this process (decoding overlapped with inference)."""
    from .outputs import make_writer
    from .progress import Progress

    fmt, out = job.format, job.output
    if out.output_dir and fmt != "txt":
        raise UsageError("--output-dir is for caption files (--format txt); use -o FILE for json/jsonl/csv")
    tag_filter = job.options.filters.build()
    style = job.options.caption.style()
    writer = make_writer(fmt, style=style, output=out.output, resume=out.resume,
                         on_existing=out.on_existing, caption_extension=out.caption_extension,
                         output_dir=out.output_dir, roots=job.inputs.roots, caption_name=out.caption_name)
    if hasattr(writer, "check_collisions"):
        writer.check_collisions(job.inputs.paths)
    todo = job.inputs.paths
    skipped = 0
    if out.resume:
        todo = [p for p in todo if not writer.is_done(p)]
        skipped = len(job.inputs.paths) - len(todo)

    tagger = job.options.model.load()
    style.use_label_order(tagger.vocab.names)  # --sort model: the writer holds this same style
    job.say(f"{tagger.describe()}; {len(todo)} images to tag"
            + (f", {skipped} already done (--resume)" if skipped else ""))
    progress = Progress(len(todo), enabled=False if job.quiet else job.progress, stream=job.log)
    try:
        for result in tagger.iter_tag_files(todo, job.options.thresholds, workers=job.options.model.workers):
            error = result.error
            if error is None:
                error = writer.write(tag_filter.apply(result))
            else:
                writer.write(result)
            if error is not None:
                progress.stream.write(("\n" if progress.enabled else "") + f"animetagnet: skipped {result.path}: {error}\n")
            progress.update(1, failed=int(error is not None))
    finally:
        writer.close()
        progress.close()
    extra = f"device {tagger.device}"
    kept = getattr(writer, "skipped_existing", 0)
    if kept:
        extra += f"; {kept} existing captions left as they were (--on-existing skip)"
    job.say(progress.summary(extra))
    return {"images": progress.done, "failed": progress.failed, "skipped_done": skipped,
            "seconds": round(progress.elapsed, 3), "images_per_s": round(progress.done / max(progress.elapsed, 1e-9), 2),
            "device": str(tagger.device)}
