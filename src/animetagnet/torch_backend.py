"""The PyTorch backend (extra `[torch]`): WD v3 timm repositories and this project's runs and exports, on CUDA or CPU.

Imported only when torch is chosen (backends.py). Every network here takes what the ONNX files
take, [N, S, S, 3] BGR 0..255 (uint8 or float32, THE preprocessing of images.py), and returns
sigmoid probabilities in label-file order, so results match the onnxruntime path:

- a WD v3 timm repository (config.json + model.safetensors + selected_tags.csv): the timm network
  named by `architecture` with `num_classes` and `model_args`, fed NCHW **BGR** scaled by
  `pretrained_cfg` mean/std, then sigmoid. BGR because that is what the WD v3 weights were trained
  on: SmilingWolf's own timm examples (wdv3-timm) reverse the RGB tensor before the call, and the
  published model.onnx files take BGR for the same network.
- one of our run directories (config.yaml + checkpoints/) or an export of one (animetagnet.json
  names the run): the trained Tagger wrapped in the export graph itself (`wdgraph.ExportGraph`:
  label layout, untrained rating rows, in-graph resize), so the outputs are the ONNX file's.

On CUDA the network runs channels-last under bf16/fp16 autocast (`--precision`), inputs travel as
uint8 from pinned memory with non-blocking copies. `iter_gpu_decoded` is the GPU front end:
JPEGs decoded in batches by torchvision (nvJPEG on CUDA), padded and resized on the device with
Pillow's own bicubic weights, so it equals the CPU path within rounding (see `resize_square`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from .bundle import LABELS_FILE, ModelBundle
from .errors import DeviceError, ImageError, ModelError
from .fileio import sha256_file
from .predict import DeviceInfo

log = logging.getLogger(__name__)

#: bf16 keeps float32's range (no overflow in logits), so it is the CUDA default where supported.
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(device: str) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}; choose one of auto, cpu, cuda")
    if device == "cpu":
        return torch.device("cpu")
    ok = torch.cuda.is_available()
    if device == "cuda" and not ok:
        built = torch.version.cuda or "none"
        raise DeviceError(f"--device cuda: torch {torch.__version__} sees no usable CUDA GPU (built for CUDA {built}; "
                          "check the driver and CUDA_VISIBLE_DEVICES)")
    return torch.device("cuda", torch.cuda.current_device()) if ok else torch.device("cpu")


def default_precision(device: torch.device) -> str:
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


class _TimmWD(nn.Module):
    """A WD v3 timm network behind the ONNX files' interface: NHWC BGR 0..255 in, probabilities out."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        mean = torch.tensor([float(v) for v in mean], dtype=torch.float32)
        std = torch.tensor([float(v) for v in std], dtype=torch.float32)
        # x/255 then (x - mean)/std in one multiply-add; channels stay BGR (see the module docstring).
        self.register_buffer("scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean / std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The NHWC -> NCHW permute is a channels-last view: no copy for CNNs that want that layout.
        x = x.permute(0, 3, 1, 2).float() * self.scale + self.shift
        return torch.sigmoid(self.net(x).float())


class _Graph(nn.Module):
    """Our export graph, probabilities only (the embedding output is for other tools)."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[0].float()


# --- loading --------------------------------------------------------------------
def load(path: Path, *, device: str = "auto", precision: str | None = None, threads: int | None = None):
    """-> (ModelBundle, TorchPredictor) for a timm repo, run or export directory. Raises ModelError/DeviceError."""
    from .backends import torch_kind

    path = Path(path)
    kind = torch_kind(path)
    if kind is None:
        raise ModelError(f"{path}: no torch weights: expected a WD v3 timm repository (config.json + model.safetensors "
                         "+ selected_tags.csv), an animetagnet run directory (config.yaml + checkpoints/) or an export "
                         "of one")
    dev = pick_device(device)
    if threads:
        torch.set_num_threads(threads)
    if kind == "timm":
        bundle, module, size = _load_timm(path)
    elif kind == "run":
        bundle, module, size = _load_run(path)
    else:
        bundle, module, size = _load_export(path)
    pred = TorchPredictor(module, size, dev, precision or default_precision(dev), kind)
    # One image through the network, on its device: the output count the label file must match.
    n_out = int(pred.run_tensor(torch.full((1, size, size, 3), 128, dtype=torch.uint8, device=dev)).shape[1])
    if n_out != len(bundle.vocab):
        raise ModelError(f"{path}: the network has {n_out} outputs but {LABELS_FILE} lists {len(bundle.vocab)} tags; "
                         "the label file does not belong to this model")
    pred.num_outputs = n_out
    # Our predictor returns probabilities whatever animetagnet.json says about the ONNX file's outputs.
    bundle.metadata.outputs = "probabilities"
    return bundle, pred


def _load_timm(path: Path):
    import timm
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    bundle = ModelBundle.read(path)
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'}: not readable JSON ({exc})") from None
    arch = cfg.get("architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{path / 'config.json'}: no 'architecture' (not a timm config)")
    pre = cfg.get("pretrained_cfg") or {}
    n_tags = len(bundle.vocab)
    declared = cfg.get("num_classes", pre.get("num_classes"))
    try:
        net = timm.create_model(arch, pretrained=False, num_classes=int(declared or n_tags), **(cfg.get("model_args") or {}))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(f"{path / 'config.json'}: timm cannot build {arch!r}: {exc}") from None
    head = net.get_classifier()
    head_key = next((k for k, v in net.named_parameters() if v is getattr(head, "weight", None)), None)
    weights = path / "model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as fh:
            rows = fh.get_slice(head_key).get_shape()[0] if head_key in fh.keys() else None
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None
    if declared is not None and int(declared) != n_tags or rows is not None and rows != n_tags:
        raise ModelError(f"{path}: config.json says num_classes {declared}, model.safetensors has {rows} outputs, but "
                         f"{LABELS_FILE} lists {n_tags} tags; the label file does not belong to these weights")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise ModelError(f"{weights}: weights do not fit {arch} from config.json: {lines[-1] if lines else exc}") from None
    size = pre.get("input_size", [3, None, None])[-1] or (cfg.get("model_args") or {}).get("img_size")
    if not size:
        size = net.pretrained_cfg.get("input_size", [3, 224, 224])[-1]
    declared_size = bundle.metadata.preprocessing.get("size")
    if declared_size is not None and int(declared_size) != int(size):
        raise ModelError(f"{path}: animetagnet.json says input size {declared_size} but config.json says {size}")
    mean, std = pre.get("mean", net.pretrained_cfg.get("mean")), pre.get("std", net.pretrained_cfg.get("std"))
    return bundle, _TimmWD(net, mean, std), int(size)


def _train_modules():
    try:
        from animetagnet_train import export, wdgraph
    except ImportError as exc:
        raise ModelError(f"loading a training run needs the training modules and their dependencies ({exc}); "
                         "pip install 'animetagnet[torch]'") from None
    return export, wdgraph


def _load_run(run_dir: Path):
    """A run directory: its best weights (else last) in the export graph, with the export's label plan."""
    from animetagnet_train.errors import TrainingError

    export, wdgraph = _train_modules()
    weights = "best" if (run_dir / "checkpoints" / "best.safetensors").is_file() else "last"
    try:
        cfg, run_vocab, net, _ = export.load_run(run_dir, weights)
        positives = _rating_positives(run_dir, run_vocab)
        plan = wdgraph.plan_labels(run_vocab, positives)
    except TrainingError as exc:
        raise ModelError(str(exc)) from None
    size = cfg.model.image_size
    bundle = ModelBundle.read(run_dir)
    bundle.vocab = plan.vocab
    bundle.metadata.name = bundle.metadata.name or cfg.name
    bundle.metadata.extra["labels"] = plan.metadata()
    return bundle, _Graph(wdgraph.ExportGraph(net, plan, size, size)), size


def _rating_positives(run_dir: Path, run_vocab) -> int:
    """Rating labels in the run's training split (export's rule for "trained ratings"); 0 when unknown."""
    from animetagnet.vocab import Category
    from animetagnet_train import data

    rating = set(run_vocab.indices(Category.RATING).tolist())
    if not rating:
        return 0
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        train = data.open_dataset(info["dataset"]).split("train")
    except Exception:  # noqa: BLE001 - dataset moved or gone: ratings are shown as untrained, said once
        log.warning("%s: the run's dataset is not readable; its rating rows are treated as untrained", run_dir)
        return 0
    return sum(int(k) in rating for lab in train.labels for k in lab)


def _load_export(out_dir: Path):
    """An export: the run it names, in the graph export built (same label plan, same input size)."""
    from animetagnet_train.errors import TrainingError

    export, wdgraph = _train_modules()
    bundle = ModelBundle.read(out_dir)
    meta = bundle.metadata
    prov, pre = meta.provenance, meta.preprocessing
    run_dir = Path(prov["run"])
    weights = prov.get("weights") or "best"
    wfile = run_dir / "checkpoints" / f"{weights}.safetensors"
    if not wfile.is_file():
        raise ModelError(f"{out_dir}: the torch backend needs the run's weights, and {wfile} is gone "
                         "(use --backend onnx for this export)")
    want = prov.get("weights_sha256")
    if want and sha256_file(wfile) != want:
        raise ModelError(f"{out_dir}: {wfile} changed since the export (sha256 differs); export again, or use --backend onnx")
    try:
        cfg, run_vocab, net, _ = export.load_run(run_dir, weights)
    except TrainingError as exc:
        raise ModelError(str(exc)) from None
    labels = meta.extra.get("labels") or {}
    plan = wdgraph.LabelPlan(vocab=bundle.vocab, added_ratings="rating_rows" in labels,
                             ratings_trained=labels.get("ratings", "trained") == "trained")
    expected = len(run_vocab) + (4 if plan.added_ratings else 0)
    if expected != len(bundle.vocab):
        raise ModelError(f"{out_dir}: {LABELS_FILE} lists {len(bundle.vocab)} tags but the run {run_dir} has "
                         f"{len(run_vocab)} outputs{' + 4 added rating rows' if plan.added_ratings else ''}")
    network_size = int(pre.get("network_size") or cfg.model.image_size)  # an export may run the network off its trained size
    size = int(pre.get("size") or network_size)
    flip = pre.get("test_time") == wdgraph.FLIP_AVERAGE
    return bundle, _Graph(wdgraph.ExportGraph(net, plan, network_size, size, flip_average=flip)), size




# --- running ----------------------------------------------------------------------
class TorchPredictor:
    """The torch twin of predict.Predictor: `run` maps NHWC BGR batches to probabilities."""

    #: What the decoding workers should hand over: uint8 is exact (THE preprocessing yields integral
    #: values) and a quarter of float32's bytes to copy between processes and to the GPU.
    wire_dtype = np.uint8
    fixed_batch: int | None = None

    def __init__(self, module: nn.Module, input_size: int, device: torch.device, precision: str, kind: str):
        if precision not in ("fp32", *AUTOCAST):
            raise DeviceError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError("--precision bf16: this GPU has no bf16 support; use --precision fp16")
        self.torch_device = device
        self.precision = precision
        self.input_size = input_size
        self.num_outputs: int | None = None  # set by `load` from a first run
        self.kind = kind
        self.channels_last = device.type == "cuda"
        module = module.eval().to(device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed input shapes: autotune the convolutions once
        self.module = module
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        what = [f"torch {torch.__version__.split('+')[0]}", name, precision]
        if precision != "fp32":
            what[-1] += " autocast"
        if self.channels_last:
            what.append("channels-last")
        self.device = DeviceInfo(device.type, tuple(what))

    def _autocast(self):
        dtype = AUTOCAST.get(self.precision)
        return torch.autocast(self.torch_device.type, dtype=dtype, enabled=dtype is not None)

    def to_device(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch))
        if self.torch_device.type == "cuda":
            # Page-locked staging lets the copy run asynchronously (torch caches the pinned blocks).
            x = x.pin_memory().to(self.torch_device, non_blocking=True)
        return x

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """[N, S, S, 3] uint8/float BGR already on the device -> [N, tags] float32 probabilities (on the device)."""
        with torch.inference_mode(), self._autocast():
            return self.module(x)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.uint8:
            batch = batch.astype(np.float32, copy=False)
        return self.run_tensor(self.to_device(batch)).cpu().numpy()

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()


# --- the GPU front end ------------------------------------------------------------
_matrices: dict[tuple[int, int, str], torch.Tensor] = {}


def _pillow_matrix(src: int, dst: int, device: torch.device) -> torch.Tensor:
    """[dst, src] float32 weights of Pillow's BICUBIC resize (a = -0.5, antialiased when shrinking), cached.

    Pillow's `precompute_coeffs` in closed form, computed on the device (datasets have many source
    sizes); equal to the weights Pillow itself applies in float mode (tests compare pixels)."""
    key = (src, dst, str(device))
    m = _matrices.get(key)
    if m is None:
        a = -0.5
        scale = src / dst
        fs = max(scale, 1.0)
        center = (torch.arange(dst, dtype=torch.float64, device=device) + 0.5) * scale
        lo = torch.clamp(torch.trunc(center - 2.0 * fs + 0.5), min=0)
        hi = torch.clamp(torch.trunc(center + 2.0 * fs + 0.5), max=src)
        j = torch.arange(src, dtype=torch.float64, device=device)[None, :]
        x = ((j - center[:, None] + 0.5) / fs).abs()
        w = torch.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        torch.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, torch.zeros_like(x)))
        w = torch.where((j >= lo[:, None]) & (j < hi[:, None]), w, torch.zeros_like(w))
        m = (w / w.sum(dim=1, keepdim=True)).float()
        if len(_matrices) > 512:  # many source sizes: keep memory bounded
            _matrices.clear()
        _matrices[key] = m
    return m


#: Above this source/target ratio the CPU path decodes JPEGs in draft mode (a DCT-domain shortcut),
#: so exactness is not on offer either way; the device then uses torch's antialiased bicubic
#: (Pillow's kernel, sparse and fast) instead of dense Pillow matrices that cost O(source^2 * target).
DRAFT_RATIO = 2


def resize_square(img: torch.Tensor, size: int, exact: bool = False) -> torch.Tensor:
    """[3, m, m] uint8 RGB square -> [size, size, 3] uint8 BGR, on img's device.

    Below DRAFT_RATIO: Pillow's two passes (columns, then rows), each rounded to uint8 as Pillow
    does, with Pillow's own weights: equal to `Image.resize(BICUBIC)` within 2 levels (Pillow's
    fixed-point weights), on real images mean |diff| < 0.01. `exact` (--exact): always so."""
    m = img.shape[-1]
    x = img.float()
    if m == size:
        out = x
    elif exact or m < DRAFT_RATIO * size:
        r = _pillow_matrix(m, size, img.device)
        x = torch.matmul(x, r.t()).round_().clamp_(0, 255)  # horizontal pass first, as Pillow
        out = torch.matmul(r, x).round_().clamp_(0, 255)
    else:
        out = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True,
                                              align_corners=False)[0].round_().clamp_(0, 255)
    return out.to(torch.uint8).flip(0).permute(1, 2, 0)


def pad_square(img: torch.Tensor) -> torch.Tensor:
    """[3, h, w] -> [3, m, m] on white, placed at ((m-w)//2, (m-h)//2) like images.pad_to_square."""
    _, h, w = img.shape
    if h == w:
        return img
    m = max(h, w)
    out = torch.full((3, m, m), 255, dtype=img.dtype, device=img.device)
    y, x = (m - h) // 2, (m - w) // 2
    out[:, y : y + h, x : x + w] = img
    return out


def _inspect(path: str, size: int, exact: bool, max_pixels):
    """In a reader thread: ("gpu", bytes) for a plain JPEG the device can decode, else the CPU result."""
    from .images import load_and_preprocess, open_image
    from .tagger import LoadedImage

    try:
        img = open_image(path, max_pixels=max_pixels)
        plain = img.format == "JPEG" and img.mode in ("RGB", "L") and img.getexif().get(0x0112, 1) == 1
        # The device decodes at full size and pads to a max(w, h) square: a long thin JPEG under the
        # pixel limit could still need a huge square (the bound serve's _prepare_bounded puts on it).
        # Those take the CPU path, whose JPEG draft mode shrinks them before padding.
        side = max(img.size)
        if max_pixels is not None and side * side > max_pixels:
            plain = False
        img.close()
        if plain:
            with open(path, "rb") as fh:
                return "gpu", fh.read()
        return "cpu", LoadedImage(path, load_and_preprocess(path, size, exact=exact, max_pixels=max_pixels).astype(np.uint8))
    except ImageError as exc:
        return "cpu", LoadedImage(path, None, exc.reason)
    except Exception as exc:  # noqa: BLE001 - one hostile file must never end a batch
        return "cpu", LoadedImage(path, None, f"unexpected {type(exc).__name__}: {exc}")


def decode_on_device(datas: list[bytes], size: int, device: torch.device, exact: bool = False) -> list[torch.Tensor]:
    """JPEG bytes -> [size, size, 3] uint8 BGR tensors on `device` (nvJPEG in one batch on CUDA)."""
    import warnings

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its codecs in favour of torchcodec; they still work, and nvJPEG is here.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        raw = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        imgs = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    return [resize_square(pad_square(im), size, exact) for im in imgs]


def iter_gpu_decoded(tagger, paths: Iterable[str | os.PathLike], *, workers: int) -> Iterator:
    """Tagger.iter_probabilities with decoding on the model's device; same items, same order.

    Reader threads fetch bytes (and do the CPU path for what the device cannot decode: PNG, CMYK,
    EXIF-rotated, ...) one batch ahead of the device."""
    from .tagger import LoadedImage

    pred, size = tagger.predictor, tagger.input_size
    dev = pred.torch_device
    chunks = _batched((os.fspath(p) for p in paths), tagger.batch_size)
    window: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read") as pool:
        def submit() -> None:
            chunk = next(chunks, None)
            if chunk is not None:
                window.append((chunk, [pool.submit(_inspect, p, size, tagger.exact, tagger.max_pixels) for p in chunk]))

        submit()
        submit()
        previous = None
        while window:
            chunk, futs = window.popleft()
            submit()
            items = [f.result() for f in futs]
            gpu_idx = [i for i, (how, _) in enumerate(items) if how == "gpu"]
            tensors: dict[int, torch.Tensor] = {}
            loaded: dict[int, LoadedImage] = {}
            if gpu_idx:
                try:
                    for i, t in zip(gpu_idx, decode_on_device([items[i][1] for i in gpu_idx], size, dev, tagger.exact)):
                        tensors[i] = t
                except RuntimeError:
                    # The device decoder refused something Pillow accepts (e.g. an odd progressive file):
                    # this batch's JPEGs take the CPU path, one by one, with its error messages.
                    for i in gpu_idx:
                        loaded[i] = _inspect_cpu(chunk[i], size, tagger)
            for i, (how, value) in enumerate(items):
                if how == "cpu":
                    loaded[i] = value
            for i, it in loaded.items():
                if it.error is None:
                    tensors[i] = pred.to_device(it.array)
            order = sorted(tensors)
            # Queued on the device; the previous batch's results are handed out while this one runs.
            probs = pred.run_tensor(torch.stack([tensors[i] for i in order])) if order else None
            if previous is not None:
                yield from _emit(*previous)
            previous = (chunk, loaded, order, probs)
        if previous is not None:
            yield from _emit(*previous)


def _emit(chunk, loaded, order, probs):
    from .tagger import LoadedImage

    probs = probs.cpu().numpy() if probs is not None else None
    row = {i: probs[k] for k, i in enumerate(order)}  # type: ignore[index]
    for i, p in enumerate(chunk):
        if i in row:
            yield LoadedImage(p, None), row[i]
        else:
            yield loaded[i], None


def _inspect_cpu(path: str, size: int, tagger):
    from .images import load_and_preprocess
    from .tagger import LoadedImage

    try:
        return LoadedImage(path, load_and_preprocess(path, size, exact=tagger.exact, max_pixels=tagger.max_pixels).astype(np.uint8))
    except ImageError as exc:
        return LoadedImage(path, None, exc.reason)
    except Exception as exc:  # noqa: BLE001 - one hostile file must never end a batch
        return LoadedImage(path, None, f"unexpected {type(exc).__name__}: {exc}")


def _batched(it: Iterator[str], n: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for x in it:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
