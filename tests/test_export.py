"""Export to WD layout: ONNX contract (NHWC BGR 0..255, dynamic batch, probabilities), parity, metadata, round trip."""

import csv
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from animetagnet.images import load_and_preprocess  # noqa: E402
from animetagnet.postprocess import DEFAULT_CHARACTER_THRESHOLD  # noqa: E402
from animetagnet.vocab import RATING_NAMES, Category, Tag, Vocabulary, wd_layout_problems  # noqa: E402
from animetagnet_train import config, export, wdgraph  # noqa: E402
from animetagnet_train.errors import TrainingError  # noqa: E402
from animetagnet_train.train import train  # noqa: E402

from train_helpers import ROOT, data_root, make_synthetic  # noqa: E402

SMOKE = ROOT / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    ds = make_synthetic(base / "ds")
    train(ds, base / "run", config.load(SMOKE, ["train.epochs=1"]))
    meta = export.export(base / "run", base / "model", log=lambda m: None)
    return base, meta


def test_wd_layout_files(exported):
    base, meta = exported
    model = base / "model"
    for name in ("model.onnx", "selected_tags.csv", "animetagnet.json", "README.md"):
        assert (model / name).is_file(), name
    with open(model / "selected_tags.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["tag_id", "name", "category", "count"]
    # The run predates the WD layout (no rating rows): export prepends the four rows, untrained.
    labels = Vocabulary.read_csv(model / "selected_tags.csv")
    assert labels.names[:4] == list(RATING_NAMES) and [r[2] for r in rows[1:5]] == ["9"] * 4
    assert labels.names[4:] == Vocabulary.read_csv(base / "run" / "selected_tags.csv").names
    assert wd_layout_problems(labels) == []
    meta_file = json.loads((model / "animetagnet.json").read_text())
    assert meta_file["labels"]["ratings"] == "untrained" and "added" in meta_file["labels"]["rating_rows"]
    assert "never trained" in (model / "README.md").read_text()
    assert meta_file["outputs"] == "probabilities"
    assert meta_file["preprocessing"]["size"] == 32 and meta_file["preprocessing"]["channels"] == "BGR"
    presets = meta_file["thresholds"]["presets"]
    assert set(presets) == {"balanced", "high_precision", "high_recall"}
    assert set(presets["balanced"]["categories"]) == {"general", "character"}
    assert all(0 < t < 1 for t in presets["balanced"]["categories"].values())
    assert meta_file["provenance"]["backbone"] == "test_resnet"
    for key in ("map", "macro_f1", "micro_f1"):
        assert 0 <= meta_file["metrics"][key] <= 1
    # The dataset has a test split, and export leaves it alone: test is read once, by evaluate.
    assert (base / "ds" / "test.jsonl").is_file()
    assert "test" not in meta_file["metrics"] and "| test |" not in (model / "README.md").read_text()


def test_characters_without_val_positives_get_the_character_default():
    """A val split with no character positives: characters keep 0.85, not the general threshold."""
    vocab = Vocabulary([Tag("smile", Category.GENERAL), Tag("hat", Category.GENERAL), Tag("miku", Category.CHARACTER)])
    rng = np.random.default_rng(0)
    targets = np.zeros((30, 3), np.float32)
    targets[:, :2] = rng.random((30, 2)) < 0.4
    probs = np.clip(0.3 * rng.random((30, 3)) + 0.5 * targets, 0, 1).astype(np.float32)
    presets = export.pick_thresholds(probs, targets, vocab)
    assert set(presets) == {"balanced", "high_precision", "high_recall"}
    for preset in presets.values():
        assert "character" not in preset["categories"] and 0 < preset["categories"]["general"] < 0.8
        th = export.threshold_vector(preset, vocab)
        assert th[2] == np.float32(DEFAULT_CHARACTER_THRESHOLD)
        for k, name in enumerate(["smile", "hat"]):  # per-tag values where there is support, else the category's
            assert th[k] == np.float32(preset["tags"].get(name, preset["categories"]["general"]))


def test_export_records_its_calibration_through_the_one_writer(exported):
    base, meta = exported
    calib = meta["thresholds"]["calibration"]
    assert calib["by"] == "animetagnet export" and calib["split"] == "val" and calib["images"] == 12
    assert json.loads((base / "model" / "animetagnet.json").read_text())["thresholds"] == meta["thresholds"]


def test_onnx_contract_dynamic_batch_probabilities_and_parity(exported):
    base, _ = exported
    sess = ort.InferenceSession(str(base / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.name == "input" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [32, 32, 3]  # [batch, H, W, 3]
    assert [o.name for o in sess.get_outputs()] == ["output", "embedding"]  # imgutils needs both, in this order
    _, _, net, _ = export.load_run(base / "run")
    images = sorted((base / "ds" / "images").glob("val_*"))[:3]
    batch = np.stack([load_and_preprocess(p, 32) for p in images])
    three, emb = sess.run(None, {"input": batch})
    one = sess.run(None, {"input": batch[:1]})[0]
    assert three.shape == (3, 7) and one.shape == (1, 7)  # 4 rating rows + 3 tags
    assert np.allclose(one[0], three[0], atol=1e-6)
    assert three.min() >= 0 and three.max() <= 1
    assert (three[:, :4] == 0).all()  # untrained ratings are a constant, never noise
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(batch))).numpy()
        pooled = net.backbone.forward_head(net.backbone.forward_features(net.normalise(torch.from_numpy(batch))), pre_logits=True)
    assert np.abs(ref - three[:, 4:]).max() < export.PARITY_TOLERANCE
    # The embedding is what the head reads: the head applied to it gives the outputs back.
    assert emb.shape == tuple(pooled.shape) and np.abs(emb - pooled.numpy()).max() < 1e-4
    head = net.backbone.get_classifier()
    with torch.no_grad():
        assert np.abs(torch.sigmoid(head(torch.from_numpy(emb))).numpy() - three[:, 4:]).max() < 1e-4


def test_parity_is_reported_and_export_never_clobbers(exported):
    base, meta = exported
    assert meta["parity"]["max_abs_diff"] <= export.PARITY_TOLERANCE and meta["parity"]["images"] >= 1
    with pytest.raises(TrainingError, match="--force"):
        export.export(base / "run", base / "model", log=lambda m: None)


def test_flip_average_is_the_mean_over_the_image_and_its_mirror(exported, tmp_path):
    """`--flip-average`: same file contract, outputs = mean of the plain export's outputs on x and mirrored x."""
    base, _ = exported
    meta = export.export(base / "run", tmp_path / "flip", flip_average=True, log=lambda m: None)
    assert meta["preprocessing"]["test_time"] == wdgraph.FLIP_AVERAGE
    assert "mirror" in (tmp_path / "flip" / "README.md").read_text()
    assert (tmp_path / "flip" / "selected_tags.csv").read_bytes() == (base / "model" / "selected_tags.csv").read_bytes()
    plain = ort.InferenceSession(str(base / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    flip = ort.InferenceSession(str(tmp_path / "flip" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in flip.get_outputs()] == ["output", "embedding"]
    assert [i.shape[1:] for i in flip.get_inputs()] == [[32, 32, 3]]
    images = sorted((base / "ds" / "images").glob("val_*"))[:5]
    batch = np.stack([load_and_preprocess(p, 32) for p in images])
    p0, e0 = plain.run(None, {"input": batch})
    p1, e1 = plain.run(None, {"input": batch[:, :, ::-1].copy()})
    got, emb = flip.run(None, {"input": batch})
    assert np.abs(p0 - p1).max() > 1e-4  # the mirror really is a different input for this network
    assert np.abs(got - (p0 + p1) / 2).max() < 1e-5 and np.abs(emb - (e0 + e1) / 2).max() < 1e-4
    assert np.allclose(flip.run(None, {"input": batch[:1]})[0][0], got[0], atol=1e-6)  # batch rows stay apart
    assert (got[:, :4] == 0).all()  # untrained ratings still a constant


def test_network_size_runs_the_network_off_its_trained_size(exported, tmp_path):
    """`--network-size`: the ONNX input is that size, fed to the network as it is (no resize in the
    graph), and recorded with the trained size; `--input-size` still resizes to it in the graph."""
    base, _ = exported
    meta = export.export(base / "run", tmp_path / "net48", network_size=48, log=lambda m: None)
    pre = meta["preprocessing"]
    assert pre["size"] == 48 and pre["network_size"] == 48 and pre["trained_size"] == 32
    assert "in_graph_resize" not in pre
    assert "trained at 32 px and runs here at 48 px" in (tmp_path / "net48" / "README.md").read_text()
    sess = ort.InferenceSession(str(tmp_path / "net48" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [48, 48, 3]
    images = sorted((base / "ds" / "images").glob("val_*"))[:4]
    batch = np.stack([load_and_preprocess(p, 48) for p in images])
    net = export.load_run(base / "run")[2]
    with torch.no_grad():  # the network itself at 48 px: NHWC BGR 0..255 in, as the graph takes it
        direct = torch.sigmoid(net(torch.from_numpy(batch))).numpy()
    got = sess.run(None, {"input": batch})[0]
    assert np.abs(got[:, 4:] - direct).max() < 1e-4  # rows 0-3: the added rating rows
    plain = ort.InferenceSession(str(base / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    at32 = plain.run(None, {"input": np.stack([load_and_preprocess(p, 32) for p in images])})[0]
    assert np.abs(got - at32).max() > 1e-4  # a different size really is a different input
    both = export.export(base / "run", tmp_path / "net48-in64", network_size=48, input_size=64, log=lambda m: None)
    assert both["preprocessing"]["size"] == 64 and both["preprocessing"]["network_size"] == 48
    assert "in_graph_resize" in both["preprocessing"]
    with pytest.raises(TrainingError, match="--network-size 8"):
        export.export(base / "run", tmp_path / "bad", network_size=8, log=lambda m: None)


@pytest.fixture(scope="module")
def exported_wd(tmp_path_factory):
    """A WD-layout dataset with rating labels, exported at a larger input (resized in the graph) and for ComfyUI."""
    base = tmp_path_factory.mktemp("export_wd")
    ds = make_synthetic(base / "ds", ratings=True)
    train(ds, base / "run", config.load(SMOKE, ["train.epochs=1"]))
    meta = export.export(base / "run", base / "model-64", input_size=64, comfyui_dir=base / "comfy", log=lambda m: None)
    return base, meta


def test_trained_ratings_are_kept_and_marked(exported_wd):
    base, meta = exported_wd
    assert meta["labels"] == {"layout": "wd-v3", "ratings": "trained"}
    labels = Vocabulary.read_csv(base / "model-64" / "selected_tags.csv")
    assert labels.names == Vocabulary.read_csv(base / "ds" / "selected_tags.csv").names and wd_layout_problems(labels) == []
    sess = ort.InferenceSession(str(base / "model-64" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = sorted((base / "ds" / "images").glob("val_*"))[:4]
    probs = sess.run(None, {"input": np.stack([load_and_preprocess(p, 64) for p in images])})[0]
    assert (probs[:, :4] > 0).all()  # real rating outputs, not the untrained constant


def test_input_size_resizes_in_the_graph_like_pillow(exported_wd):
    base, meta = exported_wd
    assert meta["preprocessing"]["size"] == 64 and meta["preprocessing"]["network_size"] == 32
    sess = ort.InferenceSession(str(base / "model-64" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[1:] == [64, 64, 3]
    # The in-graph resize is Pillow's bicubic: on float pixels it matches Pillow's own float resize.
    rng = np.random.default_rng(1)
    x = (rng.random((64, 64, 3)) * 255).astype(np.float32)
    from PIL import Image

    pil = np.stack([np.asarray(Image.fromarray(x[:, :, c], mode="F").resize((32, 32), Image.BICUBIC)) for c in range(3)], -1)
    graph = wdgraph.ExportGraph(export.load_run(base / "run")[2], wdgraph.plan_labels(Vocabulary.read_csv(base / "ds" / "selected_tags.csv"), 1), 32, 64)
    with torch.no_grad():
        ours = graph.resize_input(torch.from_numpy(x[None]))[0].numpy()
    assert np.abs(ours - pil).max() < 1e-2
    # And the 64 px model on a 64 px input agrees with the 32 px network on Pillow's 8-bit 64->32 resize.
    _, _, net, _ = export.load_run(base / "run")
    images = sorted((base / "ds" / "images").glob("val_*"))[:4]
    big = np.stack([load_and_preprocess(p, 64) for p in images])
    small = np.stack([np.asarray(Image.fromarray(b[:, :, ::-1].astype(np.uint8)).resize((32, 32), Image.BICUBIC))[:, :, ::-1]
                      for b in big]).astype(np.float32)
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(small))).numpy()
    assert np.abs(sess.run(None, {"input": big})[0] - ref).max() < 0.02  # Pillow rounds to 8 bits between passes


def test_comfyui_layout_is_a_flat_copy(exported_wd):
    base, _ = exported_wd
    model, comfy = base / "model-64", base / "comfy"
    assert sorted(p.name for p in comfy.iterdir()) == ["model-64.csv", "model-64.onnx"]
    assert (comfy / "model-64.onnx").read_bytes() == (model / "model.onnx").read_bytes()
    assert (comfy / "model-64.csv").read_bytes() == (model / "selected_tags.csv").read_bytes()


def test_a_label_file_breaking_the_wd_layout_is_refused_naming_the_rows():
    def vocab(rows):
        return Vocabulary(Tag(n, Category(c)) for n, c in rows)

    ratings = [(r, 9) for r in RATING_NAMES]
    with pytest.raises(TrainingError, match=r"row 0 'red_thing' \(general\) should be the rating 'general'"):
        wdgraph.plan_labels(vocab([("red_thing", 0)] + ratings), 0)
    with pytest.raises(TrainingError, match=r"row 5 'red_thing' \(general\) comes after row 4 'miku' \(character\)"):
        wdgraph.plan_labels(vocab(ratings + [("miku", 4), ("red_thing", 0)]), 0)
    with pytest.raises(TrainingError, match=r"row 6 'miku' \(character\) comes after row 5 'vocaloid' \(copyright\)"):
        wdgraph.plan_labels(vocab(ratings + [("red_thing", 0), ("vocaloid", 3), ("miku", 4)]), 0)
    # Accepted: the WD layout itself, and the pre-WD layout without rating rows (the rows are added).
    assert wdgraph.plan_labels(vocab(ratings + [("red_thing", 0), ("miku", 4)]), 3).ratings_trained
    plan = wdgraph.plan_labels(vocab([("red_thing", 0), ("miku", 4)]), 0)
    assert plan.added_ratings and not plan.ratings_trained and plan.vocab.names[:4] == list(RATING_NAMES)


def test_export_of_a_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="not a run directory"):
        export.export(tmp_path, tmp_path / "m", log=lambda m: None)


@pytest.mark.slow
def test_int8_variant_is_measured(exported, tmp_path):
    base, _ = exported
    meta = export.export(base / "run", tmp_path / "m8", int8=True, log=lambda m: None)
    q = meta["int8"]
    assert (tmp_path / "m8" / "model_int8.onnx").is_file()
    assert q["speedup"] > 0 and 0 <= q["val_map"] <= 1 and q["max_abs_diff"] >= 0
    sess = ort.InferenceSession(str(tmp_path / "m8" / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.full((2, 32, 32, 3), 128.0, np.float32)})[0]
    assert out.shape == (2, len(RATING_NAMES) + 3) and ((out >= 0) & (out <= 1)).all()  # 4 rating rows + 3 tags


@pytest.mark.realdata
def test_round_trip_on_real_face_images(tmp_path):
    """prepare -> smoke-train -> export on real faces, then tag the real images with the core Tagger."""
    from animetagnet import Tagger
    from animetagnet.cli import main as cli_main

    root = data_root()
    if not (root / "faces").is_dir():
        pytest.skip(f"real data not found at {root} (set ANIMETAGNET_DATA)")
    src = tmp_path / "faces-subset"
    for cls in sorted((root / "faces").iterdir()):
        (src / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:8]:
            shutil.copy(f, src / cls.name / f.name)
    ds = tmp_path / "faces"
    assert cli_main(["prepare", str(src), "--out", str(ds), "--min-count", "1", "--split", "60/20/20", "--no-plot"]) == 0
    train(ds, tmp_path / "run", config.load(SMOKE, ["train.epochs=1"]))
    meta = export.export(tmp_path / "run", tmp_path / "model", log=lambda m: None)
    vocab = Vocabulary.read_csv(tmp_path / "model" / "selected_tags.csv")
    assert len(vocab) == 24 and "ninomae_ina'nis" in vocab and vocab.names[:4] == list(RATING_NAMES)
    paths = [json.loads(line)["image"] for line in (ds / "test.jsonl").read_text().splitlines()[:5]]
    tagger = Tagger(tmp_path / "model", exact=True)
    assert tagger.input_size == meta["preprocessing"]["size"]
    results = list(tagger.iter_tag_files(paths, with_probabilities=True))
    assert [r.path for r, _ in results] == paths and all(r.ok for r, _ in results)
    probs = np.stack([p for _, p in results])
    assert probs.shape == (5, 24) and np.isfinite(probs).all()
    batch = np.stack([load_and_preprocess(p, meta["preprocessing"]["size"], exact=True) for p in paths])
    _, _, net, _ = export.load_run(tmp_path / "run")
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(batch))).numpy()
    assert np.abs(ref[:, 4:] - probs[:, 4:]).max() < export.PARITY_TOLERANCE
    # Faces have no rating labels: rows 0-3 are the untrained constant, and no rating is shown.
    assert (probs[:, :4] == 0).all() and all(r.rating is None and not r.ratings for r, _ in results)
