"""Safe image loading and THE preprocessing (WD reference), one implementation for everything.

Tagging, training, evaluation, the service and the Ray engine all call `load_image` and
`preprocess` from here, so outputs never drift between tools:

1. decode (first frame; EXIF orientation applied; CMYK, 16-bit, palette handled),
2. alpha-composite onto white,
3. pad to a white square, image centred at ((m-w)//2, (m-h)//2),
4. BICUBIC resize to the model's input size,
5. float32 0..255, RGB -> BGR, HWC.

The only permitted shortcut is JPEG draft mode (DCT-domain downscale by 1/2, 1/4 or 1/8
while decoding), and only down to a size at which the padded square is still at least twice the
model's input size, so the bicubic resize still does the last reduction; `exact=True` switches
it off.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

try:  # AVIF support when the plugin is installed (Pillow >= 11.2 also has it built in).
    import pillow_avif  # noqa: F401
except ImportError:  # pragma: no cover - optional
    pass

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]

#: Default decompression-bomb guard, in pixels (Pillow's own default).
DEFAULT_MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485

# We check the pixel count ourselves (with a clear message and a per-call limit), so
# Pillow's warning is noise; its hard error above 2x its limit is still caught below.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

WHITE = (255, 255, 255)


def _describe(source: ImageSource) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return None


def open_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open lazily (header only) and apply the decompression-bomb guard. Raises ImageError."""
    name = _describe(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError("empty file", name)
            source = io.BytesIO(source)
        elif name is not None:
            try:
                if os.path.getsize(name) == 0:
                    raise ImageError("empty file", name)
            except FileNotFoundError:
                raise ImageError("file not found", name) from None
            except IsADirectoryError:
                raise ImageError("is a directory", name) from None
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"too many pixels (decompression-bomb guard): {exc}", name) from None
        except UnidentifiedImageError:
            raise ImageError("not an image (unrecognised file format)", name) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError(f"cannot open image: {exc}", name) from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has no pixels ({w}x{h})", name)
    if max_pixels is not None and w * h > max_pixels:
        raise ImageError(
            f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb guard; raise it with --max-pixels if the file is trusted)",
            name,
        )
    return img


#: The draft keeps the padded square at least this many times the input size. Measured
#: (benchmarks/RESULTS.md, "Default decoding"): drafting down to 1x the input changed 2 of 22 tag
#: sets of a trained 96 px model on real 512 px posts and 1 of 16 of a 448 px ViT on large photos;
#: at 2x none changed, and large photos still decode 4-5x faster than exactly.
DRAFT_MARGIN = 2


def draft_request(full_size: tuple[int, int], target: int) -> tuple[int, int] | None:
    """The size to ask JPEG draft mode for so that the padded square stays >= DRAFT_MARGIN x `target`.

    Draft mode picks the largest DCT scale (1/2, 1/4, 1/8) whose result is at least the
    requested size in both dimensions. Asking for the image scaled by keep/max(w, h) keeps
    max(w', h') >= keep, i.e. the square we resize from is never below twice the model's input.
    Returns None when no reduction is possible.
    """
    w, h = full_size
    m = max(w, h)
    keep = DRAFT_MARGIN * target
    if m < 2 * keep:  # even the 1/2 scale would go below what we keep
        return None
    return (max(1, math.ceil(w * keep / m)), max(1, math.ceil(h * keep / m)))


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode fully and safely: first frame, EXIF orientation applied.

    `draft_size`: the model input size; when given and the file is a JPEG much larger than
    that, decode at a reduced DCT scale (never below the input size). Raises ImageError.
    """
    name = _describe(source)
    img = open_image(source, max_pixels=max_pixels)
    try:
        if draft_size and img.format == "JPEG":
            request = draft_request(img.size, draft_size)
            if request is not None:
                img.draft("RGB" if img.mode not in ("L", "CMYK") else img.mode, request)
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
        img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels (decompression-bomb guard): {exc}", name) from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        # Truncated JPEG/PNG, corrupt data streams, unsupported codecs.
        raise ImageError(f"cannot decode image: {exc}", name) from None
    return img


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr8 = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255)
    else:
        # 16-bit samples (0..65535) map to 8-bit by /257, as Pillow does for 16-bit RGB.
        arr8 = np.clip(np.rint(arr.astype(np.float64) / 257.0), 0, 255)
    return Image.fromarray(arr8.astype(np.uint8), "L").convert("RGB")


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB; transparency is alpha-composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _sixteen_bit_to_rgb(img)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return img.convert("RGB")


def pad_to_square(img: Image.Image) -> Image.Image:
    """Pad an RGB image with white to a centred square (WD reference placement)."""
    w, h = img.size
    if w == h:
        return img
    m = max(w, h)
    canvas = Image.new("RGB", (m, m), WHITE)
    canvas.paste(img, ((m - w) // 2, (m - h) // 2))
    return canvas


def preprocess(
    img: Image.Image,
    size: int,
    *,
    resample: int = Image.BICUBIC,
) -> np.ndarray:
    """THE preprocessing: RGB on white, pad square, resize to size x size, float32 BGR HWC.

    `resample` exists for training-time augmentation only; inference uses BICUBIC.
    """
    square = pad_to_square(to_rgb_on_white(img))
    if square.size[0] != size:
        square = square.resize((size, size), resample)
    # Reverse the channels on the uint8 view, convert once: one float32 pass, not two.
    return np.asarray(square)[:, :, ::-1].astype(np.float32)


def load_and_preprocess(
    source: ImageSource,
    size: int,
    *,
    exact: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode `source` and preprocess it for a model with input `size`. Raises ImageError."""
    img = load_image(source, max_pixels=max_pixels, draft_size=None if exact else size)
    try:
        return preprocess(img, size)
    except (OSError, ValueError) as exc:
        raise ImageError(f"cannot convert image: {exc}", _describe(source)) from None


#: File extensions treated as images when walking directories.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}
)


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
