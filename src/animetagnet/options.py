"""Every tagging option, defined once: its type, default, limits and help text, and what derives from it.

An option group is a frozen (so hashable) dataclass whose fields carry an `Option` in their
metadata. From that one definition come the command-line flags of every verb (`add_arguments`,
`from_args`), the HTTP query model of /v1/tag and /v1/caption with its OpenAPI descriptions
(serve/params.py builds it from `http_fields`), the Ray job (the groups pickle as they are),
and docs/options.md (`markdown`). A value of None means "not set": the model's metadata
decides, else the default (argument > model metadata > default, as timm's resolve_data_config
does for preprocessing; TagSelector and Tagger do the resolving).

Why dataclasses and not pydantic models (as simonw/llm's `Options` are): the core install is
numpy, Pillow and onnxruntime only, and these classes are imported by every verb and pickled
to every Ray replica. The few things pydantic would add (range checks, choices) are metadata
here and checked by `validate`; the HTTP layer, which has pydantic through FastAPI anyway,
turns the same metadata into pydantic `Field` constraints so that bad queries are 422s.

Adding an option is adding one field with `option(...)` to the right group; every verb that
takes the group gets the flag, the HTTP API gets the query parameter (unless `http=False`),
and the consumer reads it from the group.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from .errors import UsageError
from .images import DEFAULT_MAX_PIXELS

DEFAULT_GENERAL_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85
#: MCut on character tags keeps a floor, as in the reference taggers.
MCUT_CHARACTER_FLOOR = 0.15
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "onnx", "torch")
PRECISIONS = ("fp32", "bf16", "fp16")
DECODERS = ("auto", "threads", "processes", "gpu")
SORT_ORDERS = ("confidence", "name", "model")
FORMATS = ("table", "json", "jsonl", "csv", "txt")
ON_EXISTING = ("skip", "append", "prepend", "overwrite")
CAPTION_NAMES = ("stem", "full")
SHARD_FORMATS = ("parquet", "jsonl")


@dataclass(frozen=True)
class Option:
    """How one field appears to users. The field's own default and type annotation complete it."""

    help: str
    #: Public name (CLI `--name-with-dashes`, HTTP query `name_with_underscores`); default: the field name.
    name: str | None = None
    #: Extra command-line spellings, e.g. ("-m",).
    short: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    le: float | None = None
    gt: float | None = None
    #: A list option: repeatable on the command line, each value split at this separator; one
    #: string split the same way in an HTTP query.
    split: str | None = None
    metavar: str | None = None
    #: Help of the `--no-...` flag of an option that is on by default.
    off_help: str | None = None
    #: Offered as an HTTP query parameter (never for paths on the server's disk).
    http: bool = True
    #: Extra limits for HTTP only (pydantic Field arguments such as max_length or le).
    http_limits: tuple[tuple[str, Any], ...] = ()


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with its user-facing definition; see `Option`."""
    if "http_limits" in spec:
        spec["http_limits"] = tuple(dict(spec["http_limits"]).items())
    return field(default=default, metadata={"option": Option(help=help, **spec)})


@dataclass(frozen=True)
class OptionField:
    """One option of a group, resolved: attribute name, public name, base type, default, spec."""

    attr: str
    name: str
    type: type
    default: Any
    spec: Option

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_list(self) -> bool:
        return self.spec.split is not None

    def split(self, items: Iterable[str] | str | None) -> tuple[str, ...]:
        """`--exclude a,b --exclude c` (or the query `a,b,c`) -> ("a", "b", "c")."""
        if items is None:
            return ()
        if isinstance(items, str):
            items = [items]
        out: list[str] = []
        for item in items:
            out.extend(t.strip() for t in item.split(self.spec.split) if t.strip())
        return tuple(out)

    def describe_default(self) -> str:
        if self.is_list:
            return "none"
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, int) and self.default >= 10_000:
            return f"{self.default:,}"
        return repr(self.default) if isinstance(self.default, str) else str(self.default)


def _base_type(hint: Any) -> type:
    """float | None -> float, tuple[str, ...] -> str, bool -> bool."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return args[0] if args else str
    if args and origin is not None:
        return _base_type(args[0])
    return hint


class OptionGroup:
    """Base of the option groups: derivations shared by every group."""

    #: Title of the group in --help and in docs/options.md.
    title: ClassVar[str] = "options"

    def __post_init__(self) -> None:
        # Lists become tuples (hashable); Python callers may pass lists or sets.
        for f in self.option_fields():
            value = getattr(self, f.attr)
            if f.is_list and value is not None and not isinstance(value, tuple):
                object.__setattr__(self, f.attr, f.split(value) if isinstance(value, str) else tuple(value))

    @classmethod
    def option_fields(cls) -> list[OptionField]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            spec = f.metadata.get("option")
            if spec is None:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append(OptionField(f.name, spec.name or f.name, _base_type(hints[f.name]), default, spec))
        return out

    def validate(self) -> None:
        """Ranges and choices from the definitions; a one-line UsageError naming the flag."""
        for f in self.option_fields():
            value = getattr(self, f.attr)
            if value is None or f.is_list or isinstance(value, bool):
                continue
            s = f.spec
            if s.choices is not None and value not in s.choices:
                raise UsageError(f"{f.flag} must be one of {', '.join(map(str, s.choices))}, not {value!r}")
            if s.ge is not None and s.le is not None and not (s.ge <= value <= s.le):
                raise UsageError(f"{f.flag} must be between {s.ge:g} and {s.le:g}, got {value}")
            if s.ge is not None and s.le is None and value < s.ge:
                raise UsageError(f"{f.flag} must be at least {s.ge:g}, got {value}")
            if s.gt is not None and value <= s.gt:
                raise UsageError(f"{f.flag} must be above {s.gt:g}, got {value}")
            if s.le is not None and s.ge is None and value > s.le:
                raise UsageError(f"{f.flag} must be at most {s.le:g}, got {value}")

    def values(self) -> dict[str, Any]:
        """Attribute -> value of every field (options and internal ones alike)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    # --- the command line ---------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, *, only: Iterable[str] | None = None,
                      skip: Iterable[str] = (), title: str | None = None,
                      help: dict[str, str] | None = None) -> None:
        """Add this group's flags (all, or the attributes in `only`, minus `skip`) to a parser."""
        only = None if only is None else set(only)
        skip = set(skip)
        g = parser.add_argument_group(title or cls.title)
        for f in cls.option_fields():
            if (only is not None and f.attr not in only) or f.attr in skip:
                continue
            text = (help or {}).get(f.attr, f.spec.help)
            if f.type is bool:
                if f.default:
                    text = (help or {}).get(f.attr, f.spec.off_help or f"turn off: {f.spec.help}")
                    g.add_argument("--no-" + f.flag[2:], *f.spec.short, dest=f.name, action="store_false", help=text)
                else:
                    g.add_argument(f.flag, *f.spec.short, dest=f.name, action="store_true", help=text)
                continue
            kwargs: dict[str, Any] = {"dest": f.name, "help": text}
            if f.spec.metavar is not None:
                kwargs["metavar"] = f.spec.metavar
            if f.is_list:
                kwargs.update(action="append", default=None)
            else:
                kwargs.update(type=f.type, default=f.default)
                if f.spec.choices is not None:
                    kwargs["choices"] = f.spec.choices
            g.add_argument(f.flag, *f.spec.short, **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any):
        """The group from parsed arguments; flags a verb does not offer keep their defaults."""
        kwargs: dict[str, Any] = {}
        for f in cls.option_fields():
            if hasattr(args, f.name):
                value = getattr(args, f.name)
                kwargs[f.attr] = f.split(value) if f.is_list else value
        kwargs.update(overrides)
        group = cls(**kwargs)
        group.validate()
        return group

    # --- the HTTP API -------------------------------------------------------
    @classmethod
    def http_fields(cls) -> list[OptionField]:
        return [f for f in cls.option_fields() if f.spec.http]

    @classmethod
    def from_query(cls, query: dict[str, Any]):
        """The group from an HTTP query (public names; list options as one separated string)."""
        kwargs = {}
        for f in cls.http_fields():
            if f.name in query:
                value = query[f.name]
                kwargs[f.attr] = f.split(value) if f.is_list else value
        group = cls(**kwargs)
        group.validate()
        return group


# --- the groups -----------------------------------------------------------------
@dataclass(frozen=True)
class ModelOptions(OptionGroup):
    """What loads and feeds a model (the `Tagger` arguments, plus decoding threads)."""

    title: ClassVar[str] = "model"

    model: str | None = option(
        None, "model directory (model.onnx + selected_tags.csv), a model.onnx path, or a Hugging Face repo id; "
              "default: $ANIMETAGNET_MODEL or SmilingWolf/wd-swinv2-tagger-v3", short=("-m",), http=False)
    device: str = option("auto", "auto uses a GPU when a backend can (onnxruntime-gpu, else PyTorch), else CPU "
                                 "(the device used is always reported)", choices=DEVICES, http=False)
    backend: str = option("auto", "what runs the network: onnx (onnxruntime), torch (PyTorch: WD v3 timm repos, "
                                  "our runs and exports; extra [torch]), or auto: onnxruntime CUDA if it works, else "
                                  "torch CUDA if torch sees a GPU, else onnxruntime CPU (always reported)",
                          choices=BACKENDS, http=False)
    precision: str | None = option(None, "torch backend: fp32, or bf16/fp16 autocast (default bf16 on CUDA where "
                                         "supported, else fp16; fp32 on CPU)", choices=PRECISIONS, http=False)
    decoder: str = option("auto", "how image files are decoded: threads, processes (a process pool), or gpu "
                                  "(torch backend: JPEGs decoded and resized on the model's device); auto: processes "
                                  "when the model runs on CUDA, else threads", choices=DECODERS, http=False)
    threads: int | None = option(None, "onnxruntime (or torch) intra-op threads (default: its own choice)", metavar="N",
                                 ge=1, http=False)
    batch_size: int | None = option(None, "images per inference call (default 4 on CPU, 32 on CUDA)", metavar="N", ge=1, http=False)
    max_pixels: int | None = option(
        DEFAULT_MAX_PIXELS, f"refuse images with more pixels than this (decompression-bomb guard, default "
                            f"{DEFAULT_MAX_PIXELS:,})", metavar="N", ge=1, http=False)
    exact: bool = option(False, "decode JPEGs at full size (no draft-mode downscale)", http=False)
    workers: int | None = option(None, "decoding threads or processes (default: 2-8 on CPU, all cores but one with "
                                       "a GPU)", metavar="N", ge=1, http=False)

    #: Fields that are not arguments of `Tagger` (they feed its iterators).
    not_for_tagger: ClassVar[frozenset[str]] = frozenset({"workers"})

    def tagger_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.values().items() if k not in self.not_for_tagger}

    def load(self):
        """The `Tagger` these options describe."""
        from .tagger import Tagger

        return Tagger(**self.tagger_kwargs())


@dataclass(frozen=True)
class ThresholdOptions(OptionGroup):
    """Which tags are selected; None means "the model's metadata, else the default"."""

    title: ClassVar[str] = "tag selection"

    general: float | None = option(
        None, f"threshold for general tags (default {DEFAULT_GENERAL_THRESHOLD} or the model's)",
        name="general_threshold", metavar="T", ge=0.0, le=1.0)
    character: float | None = option(
        None, f"threshold for character tags (default {DEFAULT_CHARACTER_THRESHOLD} or the model's)",
        name="character_threshold", metavar="T", ge=0.0, le=1.0)
    #: Name of a preset in the model's metadata (None: the model's default preset, if any).
    preset: str | None = option(None, "a threshold preset from the model's metadata (e.g. high_precision)",
                                name="threshold_preset", metavar="NAME", http_limits={"max_length": 200})
    mcut_general: bool = option(False, "MCut (largest-gap) threshold for general tags")
    mcut_character: bool = option(False, f"MCut threshold for character tags (floor {MCUT_CHARACTER_FLOOR})")
    top_k: int | None = option(None, "keep at most K tags per image (best first)", metavar="K", ge=1,
                               http_limits={"le": 10000})
    #: Explicit thresholds for other categories by label ("copyright", "artist", "meta"); Python
    #: only. A dict is accepted and kept as sorted (label, threshold) pairs, so the group hashes.
    categories: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.categories, dict):
            object.__setattr__(self, "categories", tuple(sorted(self.categories.items())))

    def validate(self) -> None:
        super().validate()
        for k, v in self.categories:
            if not 0.0 <= v <= 1.0:
                raise UsageError(f"threshold for {k} must be between 0 and 1, got {v}")


def floor_thresholds(floor: float) -> ThresholdOptions:
    """Thresholds that keep every tag scoring at least `floor`, whatever the model's presets say."""
    return ThresholdOptions(general=floor, character=floor,
                            categories={"copyright": floor, "artist": floor, "meta": floor})


@dataclass(frozen=True)
class FilterOptions(OptionGroup):
    """Tags removed or renamed after selection, before any output (`build()` gives the TagFilter)."""

    title: ClassVar[str] = "tag filters"

    exclude: tuple[str, ...] = option((), "comma-separated tags never to output", split=",", metavar="TAGS",
                                      http_limits={"max_length": 4000})
    replace: tuple[str, ...] = option((), "rename tags: old=new, e.g. '1girl=one girl' (several: 'a=b;c=d')",
                                      split=";", metavar="OLD=NEW", http_limits={"max_length": 4000})
    drop_implied: bool = option(False, "drop tags implied by a more specific one present (long_hair when "
                                       "very_long_hair is there)")
    implications: str | None = option(None, "tag implication table (antecedent,consequent rows); implies "
                                            "--drop-implied", metavar="CSV", http=False)

    def build(self):
        """The TagFilter (reads the implication table; UsageError for a bad replacement or table)."""
        from .formatting import TagFilter, load_implications, parse_replacements

        implications = None
        if self.drop_implied or self.implications:
            implications = load_implications(self.implications)
        return TagFilter(exclude=set(self.exclude), replacements=parse_replacements(list(self.replace)),
                         implications=implications)


@dataclass(frozen=True)
class CaptionOptions(OptionGroup):
    """How selected tags are written as caption text (formatting.CaptionStyle adds the behaviour)."""

    title: ClassVar[str] = "caption style"

    spaces: bool = option(False, "write `long hair` instead of `long_hair` (kaomoji like ^_^ kept)")
    escape_parens: bool = option(False, r"escape parentheses: `irys \(hololive\)`")
    separator: str = option(", ", "between tags in captions and CSV cells (default ', ')", metavar="TEXT",
                            http_limits={"max_length": 16})
    with_confidence: bool = option(False, "write tags as (tag:0.93)")
    sort: str = option("confidence", "order of tags: by confidence (best first), by name, or model (label-file order, as kohya writes)", choices=SORT_ORDERS)
    characters_first: bool = option(True, "put character tags first", off_help="do not put character tags first")
    include_rating: bool = option(False, "start captions with the rating tag")
    always_first: tuple[str, ...] = option((), "comma-separated tags to put first when present", split=",",
                                           metavar="TAGS", http_limits={"max_length": 4000})

    def style(self):
        """The formatting.CaptionStyle with these options."""
        from .formatting import CaptionStyle

        return self if isinstance(self, CaptionStyle) else CaptionStyle(**self.values())


@dataclass(frozen=True)
class TagOptions:
    """Everything that decides what one image's tags and caption are: the four groups."""

    model: ModelOptions = ModelOptions()
    thresholds: ThresholdOptions = ThresholdOptions()
    filters: FilterOptions = FilterOptions()
    caption: CaptionOptions = CaptionOptions()

    GROUPS: ClassVar[dict[str, type[OptionGroup]]] = {
        "model": ModelOptions, "thresholds": ThresholdOptions, "filters": FilterOptions, "caption": CaptionOptions}

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for group in cls.GROUPS.values():
            group.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TagOptions":
        return cls(**{name: group.from_args(args) for name, group in cls.GROUPS.items()})


# --- job options of `tag` (both engines) -----------------------------------------
@dataclass(frozen=True)
class OutputOptions(OptionGroup):
    """Where `tag` writes its results and what it does with earlier ones."""

    title: ClassVar[str] = "output"

    format: str | None = option(None, "table on a terminal, jsonl when piped (default); txt writes caption files",
                                short=("-f",), choices=FORMATS, http=False)
    output: str | None = option(None, "result file for json/jsonl/csv (default: standard output); a directory "
                                      "of shards with --engine ray", short=("-o",), metavar="PATH", http=False)
    caption_extension: str = option(".txt", "caption file extension for --format txt", metavar="EXT", http=False)
    caption_name: str = option("stem", "caption file names: stem (a.jpg -> a.txt; a.jpg and a.png in one folder "
                                       "are refused, naming the pairs) or full (a.jpg -> a.jpg.txt)",
                               choices=CAPTION_NAMES, http=False)
    output_dir: str | None = option(None, "write caption files here, mirroring the input tree", metavar="DIR", http=False)
    on_existing: str = option("skip", "what to do with an existing caption (or -o result file); default skip: "
                                      "never destroy anything", choices=ON_EXISTING, http=False)
    resume: bool = option(False, "skip images already done (caption present or in the -o file)", http=False)


@dataclass(frozen=True)
class RayOptions(OptionGroup):
    """The Ray engine's options (--engine ray; docs/ray.md); the local engine ignores them."""

    title: ClassVar[str] = "ray engine (--engine ray; see docs/ray.md)"

    address: str | None = option(None, "Ray cluster address (default: start a local one)", name="ray_address", metavar="ADDRESS",
                                 http=False)
    shard_format: str | None = option(None, "result shards written into -o DIR (default parquet; jsonl with "
                                            "--format jsonl)", choices=SHARD_FORMATS, http=False)
    shard_rows: int = option(10_000, "records per result shard (default 10000)", metavar="N", ge=1, http=False)
    replicas: int | None = option(None, "model replicas (default: one per GPU, else one per --cpus-per-replica "
                                        "cores)", metavar="N", ge=1, http=False)
    cpus_per_replica: float | None = option(None, "CPU cores reserved per replica (default 2; 1 with a GPU)",
                                            metavar="N", gt=0, http=False)
    gpus_per_replica: float | None = option(None, "GPUs per replica (default 1 when the cluster has GPUs and "
                                                  "--device is not cpu, else 0)", metavar="N", ge=0, http=False)
    ray_batch: int | None = option(None, "images per Ray task (default: up to 256)", metavar="N", ge=1, http=False)
    max_task_retries: int = option(3, "times a batch is retried when its replica dies (default 3)", metavar="N",
                                   ge=0, http=False)


# --- the service (`serve`) ----------------------------------------------------------
@dataclass(frozen=True)
class ServeOptions(OptionGroup):
    """How `animetagnet serve` listens and what it accepts; `limits()` gives the service's Limits."""

    title: ClassVar[str] = "service"

    host: str = option("127.0.0.1", "address to listen on (default 127.0.0.1: this machine only)", http=False)
    port: int = option(8000, "port to listen on (default 8000)", ge=0, le=65535, http=False)
    max_wait_ms: float = option(5.0, "how long the first waiting image waits for others to share its batch "
                                     "(default 5)", metavar="MS", ge=0, http=False)
    gallery: str | None = option(None, "serve this gallery database (from `index`) at /gallery", metavar="DB",
                                 http=False)
    max_upload_mb: float = option(20.0, "largest accepted file (default 20 MiB)", metavar="MB", gt=0, http=False)
    max_request_mb: float = option(64.0, "largest request body (default 64 MiB)", metavar="MB", gt=0, http=False)
    max_files: int = option(32, "most images in one request (default 32)", metavar="N", ge=1, http=False)
    request_timeout: float = option(30.0, "seconds an image may wait for the model before the request fails with "
                                          "503 (default 30)", metavar="S", gt=0, http=False)
    decode_workers: int = option(2, "threads decoding uploads (default 2)", metavar="N", ge=1, http=False)
    log_level: str = option("info", "uvicorn's log level (default info)",
                            choices=("critical", "error", "warning", "info", "debug"), http=False)
    allowed_host: tuple[str, ...] = option(
        (), "also accept requests whose Host header is this name (repeatable or comma-separated; *.example.com "
            "for sub-domains, * for any; a :port is ignored); localhost, 127.0.0.1, ::1 and --host are always accepted",
        split=",", metavar="HOST", http=False)
    allowed_origin: tuple[str, ...] = option(
        (), "also accept uploads and other writes from web pages of this origin, e.g. https://app.example.com "
            "(repeatable or comma-separated); by default only the service's own pages may write",
        split=",", metavar="ORIGIN", http=False)
    max_inflight_mb: float = option(256.0, "request bodies in flight across all requests, at most (default 256 MiB; "
                                           "beyond it uploads get 503 with Retry-After)", metavar="MB", gt=0, http=False)
    max_queue: int = option(1024, "decoded images waiting for the model, at most (default 1024; each holds "
                                  "12 x input size^2 bytes); beyond it uploads get 503", metavar="N", ge=1, http=False)
    max_connections: int = option(512, "open connections at most (default 512); beyond it the longest-idle one is "
                                       "closed, or the new one refused with 503", metavar="N", ge=1, http=False)
    header_timeout: float = option(10.0, "seconds a client has to send a complete request head, from connecting or "
                                         "from its first byte (default 10)", metavar="S", gt=0, http=False)
    keep_alive: float = option(5.0, "seconds an idle keep-alive connection stays open (default 5)", metavar="S", gt=0,
                               http=False)

    def validate(self) -> None:
        super().validate()
        if self.max_inflight_mb < self.max_request_mb:
            raise UsageError(f"--max-inflight-mb ({self.max_inflight_mb:g}) must be at least --max-request-mb "
                             f"({self.max_request_mb:g}), or no request of the largest size could ever be accepted")

    def limits(self):
        """The per-process limits of serve/service.py, in bytes and seconds."""
        from .serve.service import Limits, MiB

        return Limits(max_request_bytes=int(self.max_request_mb * MiB), max_file_bytes=int(self.max_upload_mb * MiB),
                      max_files=self.max_files, request_timeout=self.request_timeout,
                      max_inflight_bytes=int(self.max_inflight_mb * MiB), max_queue=self.max_queue)

    def connection_limits(self):
        """The server's connection settings (serve/connections.py)."""
        from .serve.connections import ConnectionLimits

        return ConnectionLimits(max_connections=self.max_connections, header_timeout=self.header_timeout,
                                keep_alive=self.keep_alive)


@dataclass(frozen=True)
class IndexOptions(OptionGroup):
    """What `animetagnet index` takes from DIR and keeps in the gallery database (--db is the verb's own)."""

    title: ClassVar[str] = "indexing"

    recursive: bool = option(True, "index sub-folders too", off_help="only DIR itself, no sub-folders", http=False)
    keep_missing: bool = option(False, "keep entries of files that are no longer under DIR", http=False)
    allow_symlinks: bool = option(False, "also index (and serve) symlinks to files outside DIR; by default they "
                                         "are refused", http=False)
    floor: float | None = option(None, "store every tag scoring at least this (default 0.1), for confidence searches",
                                 gt=0.0, le=1.0, http=False)


#: Every group, in the order docs/options.md lists them.
ALL_GROUPS: tuple[type[OptionGroup], ...] = (ModelOptions, ThresholdOptions, FilterOptions, CaptionOptions,
                                             OutputOptions, RayOptions, ServeOptions, IndexOptions)


def markdown(groups: Iterable[type[OptionGroup]] = ALL_GROUPS) -> str:
    """The reference table of docs/options.md, generated from the definitions above."""
    lines: list[str] = []
    for group in groups:
        lines += [f"### {group.__name__} — {group.title}", "", (group.__doc__ or "").strip(), "",
                  "| option | HTTP query | default | meaning |", "|---|---|---|---|"]
        for f in group.option_fields():
            flag = ("--no-" + f.flag[2:]) if f.type is bool and f.default else f.flag
            http = f"`{f.name}`" if f.spec.http else "—"
            text = f.spec.help.replace("|", "\\|")
            if f.spec.choices:
                text += " (" + ", ".join(map(str, f.spec.choices)) + ")"
            lines.append(f"| `{flag}` | {http} | {f.describe_default()} | {text} |")
        lines.append("")
    return "\n".join(lines)


#: docs/options.md: hand-written text above this line, `markdown()` below it.
DOCS_MARKER = "<!-- generated by python -m animetagnet.options docs/options.md: do not edit below -->"


def write_docs(path: str) -> None:
    """Regenerate the reference part of docs/options.md in place."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    head = text.split(DOCS_MARKER, 1)[0]
    Path(path).write_text(f"{head}{DOCS_MARKER}\n\n{markdown()}", encoding="utf-8")


if __name__ == "__main__":  # python -m animetagnet.options docs/options.md
    import sys

    if len(sys.argv) > 1:
        write_docs(sys.argv[1])
    else:
        print(markdown())
