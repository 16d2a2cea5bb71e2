"""`animetagnet evaluate` end to end: vocabulary matching, run directories, failures, reports, compare mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animetagnet.cli import main
from animetagnet.errors import ModelError
from animetagnet.evaluation.runner import find_model_dir
from modelfactory import build_wd_model, wd_labels

SRC = Path(__file__).resolve().parents[1] / "src"
DATA = Path(os.environ.get("ANIMETAGNET_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _dataset(root: Path, n: int = 12, extra_tags=("not_in_model",), broken: bool = False) -> Path:
    rng = np.random.default_rng(11)
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    general = ["1girl", "smile", "solo", *extra_tags]
    characters = ["hatsune_miku"]
    labels = [("general", 9), ("sensitive", 9)] + [(g, 0) for g in general] + [(c, 4) for c in characters]
    lines = ["tag_id,name,category,count"] + [f'{i},"{name}",{cat},{50 - i}' for i, (name, cat) in enumerate(labels)]
    (root / "selected_tags.csv").write_text("\n".join(lines) + "\n")
    for split in ("val", "test"):
        recs = []
        for i in range(n):
            p = img_dir / f"{split}{i}.png"
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((36, 30)).save(p)
            tags = [t for t in general + characters if rng.random() < 0.5] + [rng.choice(["general", "sensitive"]), "unknown_label"]
            recs.append({"id": f"{split}{i}", "image": f"images/{p.name}", "tags": tags})
        if broken and split == "test":
            (img_dir / "broken.jpg").write_bytes(b"not an image at all")
            recs.append({"id": "broken", "image": "images/broken.jpg", "tags": ["1girl"]})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ds = _dataset(root / "ds")
    # The model lacks `not_in_model` and has `long_hair`, `blue_eyes`, ... that the dataset lacks.
    model = build_wd_model(root / "model", labels=wd_labels(), seed=4)
    other = build_wd_model(root / "other", labels=wd_labels(), seed=5)
    return root, ds, model, other


def test_evaluate_vocabulary_matching_and_report(setup, tmp_path):
    root, ds, model, _ = setup
    rep = tmp_path / "rep"
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "--report", str(rep), "-q", "--examples", "3"])
    assert rc == 0
    m = json.loads((rep / "metrics.json").read_text())
    assert m["dataset"]["split"] == "test"  # default: test when present
    v = m["vocabulary"]
    assert v["dataset_tags"] == 5 and v["evaluated_tags"] == 4
    assert v["dataset_tags_not_in_model"] == 1 and v["dataset_tags_not_in_model_list"] == ["not_in_model"]
    assert v["model_tags_not_in_dataset"] == len(wd_labels()) - 4 - 4  # minus ratings, minus shared tags
    assert v["labels_outside_dataset_vocabulary"] == 12
    missing = next(t for t in m["tags"] if t["name"] == "not_in_model")
    assert missing["in_model"] is False and missing["predicted"] == 0 and missing["recall"] == 0.0
    if missing["support"]:
        assert missing["ap"] == 0.0
    assert m["thresholds"]["source"].startswith("defaults")
    assert {s["name"] for s in m["strategies"]} >= {"chosen", "defaults", "fixed_0.5", "mcut"}
    assert set(m["categories"]) == {"general", "character"}
    assert m["rating"]["images_with_rating"] == 12
    for key in ("micro", "macro"):
        assert 0.0 <= m["f1_at_pr"][key]["threshold"] <= 1.0
    html = (rep / "report.html").read_text()
    assert "data:image/png;base64," in html  # plots embedded
    assert "data:image/jpeg;base64," in html  # thumbnails embedded
    assert "not_in_model" in html and "Definitions" in html and "predicting nothing scores" in html


def test_predicting_nothing_cannot_look_good(setup, tmp_path):
    _, ds, model, _ = setup
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "-q",
               "--general-threshold", "1.0", "--character-threshold", "1.0", "--report", str(tmp_path / "r")])
    assert rc == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["headline"]["micro_f1"] == 0.0 and m["headline"]["macro_f1"] == 0.0
    assert m["example_based"]["jaccard"] == 0.0
    assert m["example_based"]["label_accuracy"] == pytest.approx(m["example_based"]["label_accuracy_if_nothing_predicted"])
    assert m["example_based"]["label_accuracy"] > 0.3  # still there, labelled, never a headline


def test_mcut_strategy_matches_the_tagger(setup):
    """The report's MCut row predicts exactly what `animetagnet tag --mcut-general --mcut-character` selects."""
    from animetagnet import Tagger
    from animetagnet.evaluation.dataset import load_split
    from animetagnet.evaluation.runner import run_model
    from animetagnet.postprocess import ThresholdOptions

    _, ds, model, _ = setup
    data = run_model(model, load_split(ds, "val"), progress=False, log=lambda m: None)
    pred = data.scores >= data.mcut_matrix(data.thresholds(None, None))
    tagger = Tagger(model)
    opts = ThresholdOptions(mcut_general=True, mcut_character=True)
    for i, path in enumerate(data.images):
        got = set(tagger.tag(path, opts).all_tags())
        expected = {n for j, n in enumerate(data.tag_names) if pred[i, j]}
        assert expected == got & set(data.tag_names), path


def test_report_renders_without_matplotlib(setup, tmp_path, monkeypatch):
    from animetagnet.evaluation import plots

    _, ds, model, _ = setup
    monkeypatch.setattr(plots, "_plt", lambda: None)
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "--split", "val", "-q", "--report", str(tmp_path)])
    assert rc == 0
    html = (tmp_path / "report.html").read_text()
    assert "matplotlib is not installed" in html
    assert "data:image/png" not in html
    assert "Every tag" in html


def test_compare_mode(setup, tmp_path):
    _, ds, model, other = setup
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "--compare", str(other), "-q", "--report", str(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["compared_with"]["model"]["path"] == str(other)
    assert m["compared_with"]["dataset"]["images"] == m["dataset"]["images"]
    html = (tmp_path / "report.html").read_text()
    assert "Side by side" in html and " vs " in html.split("<h1>")[1].split("</h1>")[0]
    assert f"{m['headline']['micro_f1']:.3f}" in html and f"{m['compared_with']['headline']['micro_f1']:.3f}" in html


def test_unreadable_image_is_reported_and_exit_1(tmp_path):
    ds = _dataset(tmp_path / "ds", n=5, broken=True)
    model = build_wd_model(tmp_path / "model")
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "-q", "--report", str(tmp_path / "r")])
    assert rc == 1
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["dataset"]["images"] == 5 and m["dataset"]["images_failed"] == 1
    assert m["dataset"]["failed"][0]["path"].endswith("broken.jpg")


def test_run_directory_resolution(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(ModelError, match="export"):
        find_model_dir(str(run))
    build_wd_model(run / "export")
    assert find_model_dir(str(run)) == run / "export"
    assert find_model_dir(str(run / "export")) == run / "export"
    assert find_model_dir(str(run / "export" / "model.onnx")) == run / "export"


def test_usage_errors(setup, tmp_path):
    _, ds, model, _ = setup
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "nope")]) == 2
    assert main(["evaluate", "--model", str(model), "--data", str(ds), "--split", "train"]) == 2


def test_cli_subprocess_without_torch(setup, tmp_path):
    """The evaluation package never imports torch: run the verb with torch made unimportable."""
    _, ds, model, _ = setup
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from animetagnet.cli import main\n"
        f"rc = main(['evaluate', '--model', {str(model)!r}, '--data', {str(ds)!r}, '-q', '--report', {str(tmp_path)!r}])\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "sys.exit(rc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "micro" in proc.stdout
    assert (tmp_path / "report.html").is_file()


@pytest.mark.realdata
def test_real_faces_report(tmp_path):
    faces = DATA / "faces"
    if not faces.is_dir():
        pytest.skip(f"real data not found at {faces} (set ANIMETAGNET_DATA to ../shared/data)")
    chars = sorted(p.name for p in faces.iterdir() if p.is_dir())[:4]
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "selected_tags.csv").write_text("tag_id,name,category,count\n"
                                          + "".join(f'{i},"{c}",4,10\n' for i, c in enumerate(chars)))
    recs = []
    for c in chars:
        for f in sorted((faces / c).iterdir())[:5]:
            recs.append({"id": f.stem, "image": str(f), "tags": [c]})
    (ds / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    labels = [(c, 4) for c in chars] + [("1girl", 0)]
    model = build_wd_model(tmp_path / "model", labels=labels)
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "-q", "--report", str(tmp_path / "r")])
    assert rc == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["dataset"]["images"] == 20 and m["dataset"]["images_failed"] == 0
    assert m["categories"]["character"]["tags_with_support"] == 4
    assert "data:image/jpeg;base64," in (tmp_path / "r" / "report.html").read_text()


@pytest.mark.realdata
def test_wd_v3_vocabulary_against_real_danbooru_posts(tmp_path):
    """A model with the real 10,861-row WD v3 label file, scored on real posts with their human tags."""
    import csv

    wd = DATA / "tags" / "wd_v3_selected_tags.csv"
    tagged = DATA / "danbooru-512px" / "tagged"
    if not wd.is_file() or not (tagged / "tags.json").is_file():
        pytest.skip(f"real data not found under {DATA} (set ANIMETAGNET_DATA to ../shared/data)")
    with wd.open(encoding="utf-8") as fh:
        wd_rows = [(r["name"], int(r["category"])) for r in csv.DictReader(fh)]
    wd_cat = dict(wd_rows)
    posts = json.loads((tagged / "tags.json").read_text())
    names = sorted({t for tags in posts.values() for t in tags})
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "selected_tags.csv").write_text("tag_id,name,category,count\n" + "".join(
        f'{i},"{n}",{wd_cat.get(n, 0)},1\n' for i, n in enumerate(names)))
    (ds / "test.jsonl").write_text("".join(json.dumps({"id": f, "image": str(tagged / f), "tags": t}) + "\n"
                                           for f, t in posts.items()))
    model = build_wd_model(tmp_path / "wd", labels=wd_rows)
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "-q", "--report", str(tmp_path / "r")])
    assert rc == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    in_wd = [n for n in names if n in wd_cat]
    assert m["dataset"]["images"] == len(posts) and m["dataset"]["images_failed"] == 0
    assert m["vocabulary"]["evaluated_tags"] == len(in_wd)
    assert m["vocabulary"]["dataset_tags_not_in_model"] == len(names) - len(in_wd)
    assert m["vocabulary"]["model_tags_not_in_dataset"] == sum(1 for n, c in wd_rows if c != 9) - len(in_wd)
    assert m["headline"]["tags_per_image_true"] == pytest.approx(sum(len(t) for t in posts.values()) / len(posts))


def test_max_pixels_is_applied(setup, tmp_path, capsys):
    """`evaluate --max-pixels` reaches the loader: images above it fail, as in `tag`."""
    _, ds, model, _ = setup
    # The dataset's images are 36x30 = 1080 pixels: a limit of 1000 refuses every one of them.
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "-q", "--max-pixels", "1000"])
    assert rc == 2  # no image could be read: a setup error, not an evaluation without the limit
    assert "could be read" in capsys.readouterr().err
    rc = main(["evaluate", "--model", str(model), "--data", str(ds), "-q", "--max-pixels", "1080",
               "--report", str(tmp_path / "r")])
    assert rc == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["dataset"]["images"] == 12


def test_compare_uses_the_same_preset(setup, tmp_path, capsys):
    """`evaluate --threshold-preset P --compare OTHER` evaluates both models at their preset P."""
    _, ds, _, _ = setup
    meta = {"thresholds": {"default": "strict", "presets": {"strict": {"categories": {"general": 0.99}},
                                                            "loose": {"categories": {"general": 0.01}}}}}
    a = build_wd_model(tmp_path / "a", labels=wd_labels(), seed=4, metadata=meta)
    b = build_wd_model(tmp_path / "b", labels=wd_labels(), seed=5, metadata=meta)
    capsys.readouterr()
    rc = main(["evaluate", "--model", str(a), "--data", str(ds), "-q", "--json", "--threshold-preset", "loose",
               "--compare", str(b)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert "model preset 'loose'" in res["thresholds"]["source"]
    assert "model preset 'loose'" in res["compared_with"]["thresholds"]["source"]
