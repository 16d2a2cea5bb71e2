"""kohya sd-scripts, ComfyUI-WD14-Tagger and the A1111 wd14 tagger read our exports as they read WD models.

None of the three can be installed from a package registry (a script in a training repo and two
UI plugins), so each reader below restates, in our own words, how that tool turns a WD model folder
into captions; the tests then check that the names and captions equal ours. Conventions, read from
each tool's source:

kohya sd-scripts v0.9.1, `finetune/tag_images_by_wd14_tagger.py --onnx`
  - Model: `--model_dir DIR --repo_id NAME` uses DIR/NAME/{model.onnx,selected_tags.csv} when that
    folder exists (no download), so an export folder is used as it is.
  - Pixels: always 448 px (a constant, not the model's shape): RGB -> BGR, padded to a centred
    square with white (the odd pixel goes right/bottom), then resized to 448 — Pillow LANCZOS when
    the square is at most 448 px, OpenCV otherwise — float32 0..255. The batch dimension is read
    from the model; a symbolic one is accepted.
  - Labels: the csv header must start `tag_id,name,category`; names are split by the category
    column into rating (9), general (0) and character (4) lists. Outputs 0-3 are ratings (argmax
    with --use_rating_tags, put first); output 4+i is general[i] while i < len(general), else
    character[i - len(general)] — by position, so any other category after the characters indexes
    past the character list (IndexError when it fires).
  - Selection and caption: confidence >= the general / character threshold; tags in label-file
    order, joined with ", ", written with a trailing newline.

ComfyUI-WD14-Tagger (pythongosssss)
  - Model: flat NAME.onnx + NAME.csv in its models folder (listed only when both exist).
  - Pixels: size = the model input's dimension 1; the node's IMAGE (float 0..1) goes back to uint8
    by truncation, the image is resized (LANCZOS) so its long side is that size, then pasted onto
    a white square, RGB -> BGR, float32 0..255. Only output 0 is read.
  - Labels: general block = from the first category-0 row up to the first category-4 row, character
    block = from the first category-4 row to the end (ratings are not shown).
  - Selection and caption: confidence strictly > threshold; characters first, then general, each in
    label order; `(` `)` escaped as `\\(` `\\)`; joined with ", ".

A1111 wd14 tagger (toriato/stable-diffusion-webui-wd14-tagger; picobyte's fork was not read here)
  - Model: a Hugging Face repo id (model.onnx + selected_tags.csv through hf_hub_download).
  - Pixels: size = the model input's dimension 1; white square, OpenCV resize, BGR float32.
  - Labels: rows 0-3 are the ratings by position; every later row is one tag dictionary (no
    category split, one threshold), confidence >= threshold, sorted by confidence (best first).

Pixel paths that need OpenCV (kohya above 448 px, A1111 always) are not reproduced here: OpenCV is
not a dependency of this project. Their label reading is checked on our own probabilities.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from animetagnet import Tagger
from animetagnet.vocab import RATING_NAMES, Category, Tag, Vocabulary, extra_category_warning
from cli_helpers import run_cli
from modelfactory import build_wd_model, wd_labels

pytestmark = pytest.mark.realdata

KOHYA_SIZE = 448


# --- kohya sd-scripts ------------------------------------------------------------------------

def kohya_labels(csv_path: Path) -> tuple[list[str], list[str], list[str]]:
    with open(csv_path, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, rows = rows[0], rows[1:]
    assert header[:3] == ["tag_id", "name", "category"], header
    return ([r[1] for r in rows if r[2] == "9"], [r[1] for r in rows if r[2] == "0"],
            [r[1] for r in rows if r[2] == "4"])


def kohya_pixels(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    h, w = rgb.shape[:2]
    side = max(h, w)
    if side > KOHYA_SIZE:
        raise NotImplementedError("kohya resizes squares above 448 px with OpenCV")
    top, left = (side - h) // 2, (side - w) // 2
    square = np.full((side, side, 3), 255, np.uint8)
    square[top:top + h, left:left + w] = rgb
    # kohya flips to BGR first and converts back around Pillow's resize: the same pixels as resizing RGB.
    out = np.asarray(Image.fromarray(square).resize((KOHYA_SIZE, KOHYA_SIZE), Image.LANCZOS))
    return out[:, :, ::-1].astype(np.float32)


def kohya_caption(prob: np.ndarray, labels, general_threshold: float, character_threshold: float,
                  use_rating_tags: bool = False) -> str:
    ratings, general, characters = labels
    tags = []
    for i, p in enumerate(prob[4:]):
        if i < len(general):
            if p >= general_threshold:
                tags.append(general[i])
        elif p >= character_threshold:
            tags.append(characters[i - len(general)])  # by position: IndexError past the character block
    if use_rating_tags:
        tags.insert(0, ratings[int(np.argmax(prob[:4]))])
    return ", ".join(tags) + "\n"


def kohya_session(model_dir: Path, repo_id: str) -> ort.InferenceSession:
    """The folder kohya loads for --model_dir DIR --repo_id ID, and its batch-size rule."""
    import onnx

    path = model_dir / repo_id.replace("/", "_") / "model.onnx"
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param or dim0.dim_value <= 0  # dynamic: kohya keeps its --batch_size
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- ComfyUI-WD14-Tagger ---------------------------------------------------------------------

def comfyui_installed(models_dir: Path) -> list[str]:
    return sorted(p.stem for p in models_dir.glob("*.onnx") if (models_dir / f"{p.stem}.csv").exists())


def comfyui_pixels(path: Path, size: int) -> np.ndarray:
    node_image = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0  # ComfyUI's IMAGE
    image = Image.fromarray(np.array(node_image * 255, dtype=np.uint8))
    ratio = float(size) / max(image.size)
    new = tuple(int(x * ratio) for x in image.size)
    image = image.resize(new, Image.LANCZOS)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(image, ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.asarray(square).astype(np.float32)[:, :, ::-1]


def comfyui_blocks(csv_path: Path) -> tuple[list[str], int | None, int | None]:
    names, general_index, character_index = [], None, None
    with open(csv_path, encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        for i, row in enumerate(reader):
            if general_index is None and row[2] == "0":
                general_index = i
            elif character_index is None and row[2] == "4":
                character_index = i
            names.append(row[1])
    return names, general_index, character_index


def comfyui_caption(prob: np.ndarray, blocks, threshold: float, character_threshold: float) -> str:
    names, gi, ci = blocks
    result = list(zip(names, prob))
    general = [t for t in result[gi:ci] if t[1] > threshold]
    character = [t for t in result[ci:] if t[1] > character_threshold]
    return ", ".join(n.replace("(", "\\(").replace(")", "\\)") for n, _ in character + general)


# --- A1111 wd14 tagger -----------------------------------------------------------------------

def a1111_read(prob: np.ndarray, csv_path: Path, threshold: float) -> tuple[dict, str]:
    with open(csv_path, encoding="utf-8") as f:
        names = [r["name"] for r in csv.DictReader(f)]
    ratings = dict(zip(names[:4], prob[:4].tolist()))
    tags = dict(zip(names[4:], prob[4:].tolist()))
    kept = [t for t, c in sorted(tags.items(), key=lambda i: i[1], reverse=True) if c >= threshold]
    return ratings, ", ".join(kept)


# --- ours ------------------------------------------------------------------------------------

def input_shape(model: Path) -> list:
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0].shape


def our_captions(folder: Path, model: Path, *args: str) -> dict[str, str]:
    """`animetagnet tag FOLDER -f txt ...`: caption files beside the images, read back verbatim."""
    for old in folder.glob("*.txt"):
        old.unlink()
    proc = run_cli("tag", str(folder), "--model", str(model), "--exact", "-f", "txt", "-q", *args)
    assert proc.returncode == 0, proc.stderr
    return {p.name: p.with_suffix(".txt").read_text(encoding="utf-8") for p in sorted(folder.glob("*.jpg"))}


def our_probs(model: Path, images: list[Path]) -> np.ndarray:
    tagger = Tagger(model, exact=True)
    return tagger.predict(np.stack([tagger.prepare(p) for p in images]))


@pytest.fixture(scope="module")
def images(tmp_path_factory, real_images, faces_run) -> Path:
    """One flat folder: the 22 real 512 px posts and 16 real 128 px faces from the held-out split."""
    folder = tmp_path_factory.mktemp("peer-images")
    for p in real_images:
        shutil.copy(p, folder / f"post-{p.name}")
    for i, p in enumerate(faces_run[2][:16]):
        shutil.copy(p, folder / f"face-{i:02d}.jpg")
    return folder


@pytest.fixture(scope="module")
def wd448(tmp_path_factory) -> Path:
    """A WD-layout model at 448 px with general tags, characters (one with parentheses) and trained
    ratings: random weights, so every reader has something in every block."""
    return build_wd_model(tmp_path_factory.mktemp("wd448") / "wd448", size=448, seed=11, embedding=True)


def check_selection(theirs, ours, names, threshold, margin, their_captions, our_captions_, split) -> None:
    """Their confidences come from their own resampling, so a tag whose confidence lies within
    `margin` (the largest difference seen) of the threshold may go either way. Every other tag must be
    selected alike, and an image with no such tag must get exactly our caption."""
    compared = selected = images_equal = 0
    for t, o, theirs_text, mine in zip(theirs, ours, their_captions, our_captions_):
        mine_tags = set(split(mine))
        ambiguous = False
        for name, pt, po in zip(names, t, o):
            if abs(pt - threshold) <= margin or abs(po - threshold) <= margin:
                ambiguous = True
                continue
            assert (pt >= threshold) == (name in mine_tags), (name, pt, po, mine)
            compared += 1
            selected += int(pt >= threshold)
        if not ambiguous:
            assert theirs_text == mine
            images_equal += 1
    assert compared >= 0.9 * len(theirs) * len(names), compared
    assert selected > 0 and images_equal > 0, (selected, images_equal)


# --- kohya -----------------------------------------------------------------------------------

def test_kohya_reads_our_labels_as_we_do(images, wd448):
    paths = sorted(images.glob("*.jpg"))
    probs = our_probs(wd448, paths)
    labels = kohya_labels(wd448 / "selected_tags.csv")
    assert labels[0] == list(RATING_NAMES)
    style = ["--sort", "model", "--no-characters-first", "--general-threshold", "0.5", "--character-threshold", "0.6"]
    plain = our_captions(images, wd448, *style)
    rated = our_captions(images, wd448, *style, "--include-rating")
    for p, prob in zip(paths, probs):
        assert kohya_caption(prob, labels, 0.5, 0.6) == plain[p.name], p.name
        assert kohya_caption(prob, labels, 0.5, 0.6, use_rating_tags=True) == rated[p.name], p.name
    assert len({c for c in plain.values()}) > 3 and any(", " in c for c in plain.values())


def test_kohya_pixels_on_the_448_export_give_our_captions(images, faces_export, tmp_path):
    model = faces_export(448)
    # kohya --model_dir PARENT --repo_id NAME: the export folder as it is.
    sess = kohya_session(model.parent, model.name)
    assert sess.get_inputs()[0].shape[1:] == [KOHYA_SIZE, KOHYA_SIZE, 3]
    faces = sorted(images.glob("face-*.jpg"))
    theirs = sess.run(None, {sess.get_inputs()[0].name: np.stack([kohya_pixels(p) for p in faces])})[0]
    ours = our_probs(model, faces)
    # Same model, different filter to 448 px (their Lanczos, our bicubic): confidences stay close.
    diff = float(np.abs(theirs[:, 4:] - ours[:, 4:]).max())
    assert diff < 0.02, diff
    labels = kohya_labels(model / "selected_tags.csv")
    assert labels[1] == [] and len(labels[2]) == 20  # faces: characters only
    ct = 0.5
    captions = our_captions(images, model, "--sort", "model", "--no-characters-first", "--character-threshold", str(ct))
    check_selection(theirs[:, 4:], ours[:, 4:], labels[2], ct, diff,
                    [kohya_caption(t, labels, 0.35, ct) for t in theirs], [captions[p.name] for p in faces],
                    lambda c: c.strip().split(", "))
    assert any(c.strip() for c in captions.values())
    # --use_rating_tags on a model whose ratings were never trained: argmax of four zeros is row 0.
    assert (theirs[:, :4] == 0).all()
    assert all(kohya_caption(t, labels, 0.35, ct, use_rating_tags=True).startswith("general") for t in theirs)


def test_kohya_cannot_feed_a_native_size_export(faces_export):
    model = faces_export(None)
    sess = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1] != KOHYA_SIZE
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, KOHYA_SIZE, KOHYA_SIZE, 3), np.float32)})


# --- ComfyUI ---------------------------------------------------------------------------------

def test_comfyui_reads_the_flat_layout_as_we_do(images, wd448, tmp_path):
    comfy = tmp_path / "wd14_tagger"
    comfy.mkdir()
    shutil.copy(wd448 / "model.onnx", comfy / "my-tagger.onnx")  # what `export --comfyui` writes
    shutil.copy(wd448 / "selected_tags.csv", comfy / "my-tagger.csv")
    assert comfyui_installed(comfy) == ["my-tagger"]
    size = input_shape(comfy / "my-tagger.onnx")[1]
    assert size == 448
    paths = sorted(images.glob("*.jpg"))
    blocks = comfyui_blocks(comfy / "my-tagger.csv")
    assert blocks[1] == 4 and blocks[2] == 4 + sum(1 for _, c in wd_labels() if c == 0)
    probs = our_probs(wd448, paths)
    captions = our_captions(images, wd448, "--sort", "model", "--escape-parens",
                            "--general-threshold", "0.5", "--character-threshold", "0.6")
    for p, prob in zip(paths, probs):
        assert comfyui_caption(prob, blocks, 0.5, 0.6) + "\n" == captions[p.name], p.name
    assert any("irys \\(hololive\\)" in c or "irys_\\(hololive\\)" in c for c in captions.values())


def test_comfyui_pixels_on_our_export_give_our_captions(images, faces_export):
    model = faces_export(None)
    comfy = model.parent / "comfy-native"
    assert comfyui_installed(comfy) == [model.name]
    sess = ort.InferenceSession(str(comfy / f"{model.name}.onnx"), providers=["CPUExecutionProvider"])
    size = sess.get_inputs()[0].shape[1]
    paths = sorted(images.glob("*.jpg"))
    theirs = np.concatenate([sess.run(None, {"input": comfyui_pixels(p, size)[None]})[0] for p in paths])
    ours = our_probs(model, paths)
    # Their resize-then-pad (LANCZOS) vs our pad-then-resize (bicubic): close, not equal.
    diff = float(np.abs(theirs - ours).max())
    assert diff < 0.05, diff
    blocks = comfyui_blocks(comfy / f"{model.name}.csv")
    assert blocks[1] is None  # no general rows: ComfyUI's "general" block is then rows 0-3
    ct = 0.5
    captions = our_captions(images, model, "--sort", "model", "--escape-parens", "--character-threshold", str(ct))
    escaped = [n.replace("(", "\\(").replace(")", "\\)") for n in blocks[0][4:]]
    check_selection(theirs[:, 4:], ours[:, 4:], escaped, ct, diff,
                    [comfyui_caption(t, blocks, 0.35, ct) + "\n" for t in theirs], [captions[p.name] for p in paths],
                    lambda c: c.strip().split(", "))
    # The untrained rating rows are the constant 0, and ComfyUI selects with `>`: never shown, even at 0.
    assert all(not set(comfyui_caption(t, blocks, 0.0, 1.0).split(", ")) & set(RATING_NAMES) for t in theirs)


# --- A1111 -----------------------------------------------------------------------------------

def test_a1111_reads_ratings_and_tags_as_we_do(images, wd448):
    assert isinstance(input_shape(wd448 / "model.onnx")[1], int)  # it reads the size from the model
    paths = sorted(images.glob("*.jpg"))
    probs = our_probs(wd448, paths)
    captions = our_captions(images, wd448, "--sort", "confidence", "--no-characters-first",
                            "--general-threshold", "0.5", "--character-threshold", "0.5")
    proc = run_cli("tag", *map(str, paths), "--model", str(wd448), "--exact", "-f", "jsonl", "-q")
    ours = [json.loads(line) for line in proc.stdout.splitlines()]
    for p, prob, o in zip(paths, probs, ours):
        ratings, caption = a1111_read(prob, wd448 / "selected_tags.csv", 0.5)
        assert caption + "\n" == captions[p.name], p.name
        assert set(ratings) == set(o["ratings"]) and all(abs(v - o["ratings"][k]) <= 1e-4 for k, v in ratings.items())


# --- the extra-category warning --------------------------------------------------------------

def test_extra_categories_after_the_characters_are_misread_as_our_warning_says(tmp_path, real_images):
    labels = wd_labels() + [("vocaloid", 3)]
    model = build_wd_model(tmp_path / "m", size=64, labels=labels, seed=2)
    vocab = Vocabulary(Tag(n, Category(c)) for n, c in labels)
    warning = extra_category_warning(vocab)
    assert "IndexError" in warning and "ComfyUI-WD14-Tagger captions them as characters" in warning
    prob = np.zeros(len(labels), np.float32)
    prob[-1] = 0.99  # only the copyright output fires
    with pytest.raises(IndexError):
        kohya_caption(prob, kohya_labels(model / "selected_tags.csv"), 0.35, 0.85)
    assert comfyui_caption(prob, comfyui_blocks(model / "selected_tags.csv"), 0.35, 0.85) == "vocaloid"  # as a character
    assert a1111_read(prob, model / "selected_tags.csv", 0.35)[1] == "vocaloid"  # among the tags
    # Ours selects it by category: a copyright tag, never a character.
    r = Tagger(model).tag(real_images[0])
    assert "vocaloid" not in r.character
