"""The one preprocessing: parity with the WD reference on real images, every real-world file kind,
and clear errors for files that cannot be used."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animetagnet.errors import ImageError
from animetagnet.images import draft_request, load_and_preprocess, load_image, preprocess


def reference_preprocess(path: Path, size: int) -> np.ndarray:
    """Independent, straightforward transcription of the WD reference procedure."""
    image = Image.open(path)
    image = image.convert("RGBA")
    canvas = Image.new("RGBA", image.size, (255, 255, 255))
    canvas.alpha_composite(image)
    image = canvas.convert("RGB")
    max_dim = max(image.size)
    padded = Image.new("RGB", (max_dim, max_dim), (255, 255, 255))
    padded.paste(image, ((max_dim - image.size[0]) // 2, (max_dim - image.size[1]) // 2))
    if max_dim != size:
        padded = padded.resize((size, size), Image.BICUBIC)
    return np.asarray(padded, dtype=np.float32)[:, :, ::-1]


@pytest.mark.parametrize("size", [448, 224])
def test_exact_path_matches_reference_on_real_images(real_images, size):
    assert len(real_images) == 22
    for path in real_images:
        ours = load_and_preprocess(path, size, exact=True)
        ref = reference_preprocess(path, size)
        assert ours.shape == (size, size, 3) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, ref, err_msg=str(path))


def test_non_square_image_is_centred_on_white(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    out = preprocess(img, 40)
    # Rows 0..9 and 30..39 are padding (white), 10..29 the black image.
    assert out[:10].min() == 255 and out[30:].min() == 255
    assert out[10:30].max() == 0


def test_bgr_channel_order():
    img = Image.new("RGB", (8, 8), (10, 20, 30))
    out = preprocess(img, 8)
    assert tuple(out[0, 0]) == (30.0, 20.0, 10.0)


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def test_rgba_transparency_composited_on_white(tmp_path):
    arr = np.zeros((16, 16, 4), dtype=np.uint8)
    arr[:, :8] = (255, 0, 0, 255)  # opaque red left half
    arr[:, 8:] = (0, 0, 255, 0)  # fully transparent blue right half
    p = _save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png")
    out = load_and_preprocess(p, 16)
    assert tuple(out[4, 2]) == (0, 0, 255)  # red in BGR
    assert tuple(out[4, 12]) == (255, 255, 255)  # transparent -> white, not blue or black


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))
    p = _save(img, tmp_path / "p.gif", transparency=0)
    out = load_and_preprocess(p, 10)
    assert tuple(out[5, 1]) == (0, 255, 0)
    assert tuple(out[5, 8]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    p = _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "c.jpg")
    out = load_and_preprocess(p, 32)
    b, g, r = out[16, 16]
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red


def test_sixteen_bit_png(tmp_path):
    arr = np.full((8, 8), 65535, dtype=np.uint16)
    arr[:, 4:] = 32896  # 128 * 257
    p = _save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(p).mode.startswith("I")
    out = load_and_preprocess(p, 8)
    assert tuple(out[2, 1]) == (255, 255, 255)
    assert tuple(out[2, 6]) == (128, 128, 128)


def test_exif_rotation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    p = _save(img, tmp_path / "r.jpg", exif=exif)
    loaded = load_image(p)
    assert loaded.size == (20, 40)


def test_progressive_jpeg_webp_bmp(tmp_path):
    base = Image.new("RGB", (24, 24), (200, 100, 50))
    for name, kw in [("p.jpg", {"progressive": True, "quality": 95}), ("w.webp", {"lossless": True}), ("b.bmp", {})]:
        out = load_and_preprocess(_save(base, tmp_path / name, **kw), 24)
        b, g, r = out[12, 12]
        assert abs(r - 200) < 6 and abs(g - 100) < 6 and abs(b - 50) < 6, name


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 12), (255, 0, 0)), Image.new("RGB", (12, 12), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100)
    out = load_and_preprocess(p, 12)
    b, g, r = out[6, 6]
    assert r > 200 and b < 60


def _png_with_header_size(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all\n" * 10, "not an image"),
        ("bomb.png", _png_with_header_size(100_000, 100_000), "decompression-bomb"),
        ("halfbomb.png", _png_with_header_size(12_000, 12_000), "decompression-bomb"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path, name, content, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageError) as exc:
        load_and_preprocess(p, 32)
    assert reason in exc.value.reason
    assert exc.value.path == str(p)


def test_truncated_jpeg(tmp_path, real_images):
    data = real_images[0].read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cannot decode"):
        load_and_preprocess(p, 32)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_and_preprocess(tmp_path / "nope.jpg", 32)
    with pytest.raises(ImageError, match="directory"):
        load_and_preprocess(tmp_path, 32)


def test_max_pixels_is_configurable(tmp_path):
    p = _save(Image.new("RGB", (100, 100)), tmp_path / "x.png")
    with pytest.raises(ImageError, match="10,000 pixels"):
        load_and_preprocess(p, 32, max_pixels=5000)
    assert load_and_preprocess(p, 32, max_pixels=None).shape == (32, 32, 3)


@pytest.mark.parametrize("w,h,target", [(3000, 2000, 448), (2000, 3000, 448), (1791, 500, 448), (1792, 500, 448),
                                        (5000, 700, 320), (512, 512, 224), (512, 512, 96), (128, 128, 32)])
def test_draft_request_never_below_twice_the_input_size(tmp_path, w, h, target):
    req = draft_request((w, h), target)
    if max(w, h) < 4 * target:
        assert req is None
        return
    assert max(req) >= 2 * target
    p = _save(Image.new("RGB", (w, h), (90, 90, 90)), tmp_path / "big.jpg", quality=80)
    img = load_image(p, draft_size=target)
    assert max(img.size) >= 2 * target
    assert max(img.size) <= max(w, h) // 2 + 1  # it did reduce


def test_draft_mode_keeps_tags_on_real_images(real_images, model_224, tmp_path):
    """Fast path (DCT downscale) vs exact path on real images: same tags, near-equal scores."""
    from animetagnet import Tagger

    big = []
    for i, path in enumerate(real_images[:8]):
        img = Image.open(path).convert("RGB").resize((2048, 2048), Image.LANCZOS)
        big.append(_save(img, tmp_path / f"big{i}.jpg", quality=92))
    exact = Tagger(model_224, exact=True)
    fast = Tagger(model_224, exact=False)
    for p in big:
        a, b = exact.tag(p), fast.tag(p)
        assert a.all_tags().keys() == b.all_tags().keys(), p
        assert a.rating == b.rating
        pa = exact.predict(exact.prepare(p)[None])[0]
        pb = fast.predict(fast.prepare(p)[None])[0]
        assert np.max(np.abs(pa - pb)) < 0.02
        assert max(load_image(p, draft_size=224).size) < 2048  # draft really applied
