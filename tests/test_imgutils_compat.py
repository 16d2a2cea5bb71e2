"""imgutils' own code reads our export: a model trained on real faces, laid out as the offline
Hugging Face cache entries `get_wd14_tags` looks in, tags real images exactly as `animetagnet tag --exact`.

dghs-imgutils pins numpy<2, so it is not in the `test` extra: .ci/run installs it with --no-deps
(and the few modules its tagging code imports). Without it this test skips, which CI refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("huggingface_hub")

from animetagnet.vocab import RATING_NAMES, Vocabulary  # noqa: E402
from cli_helpers import run_cli  # noqa: E402
from modelfactory import CHARACTERS, GENERAL, build_wd_model  # noqa: E402

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

# get_wd14_tags(model_name="SwinV2_v3") reads the network from one repo and the labels from another.
MODEL_NAME = "SwinV2_v3"
LABEL_REPO = "SmilingWolf/wd-swinv2-tagger-v3"
MODEL_REPO = "deepghs/wd14_tagger_with_embeddings"  # file: <LABEL_REPO>/model.onnx
REV = "0123456789abcdef0123456789abcdef01234567"

# Runs in a fresh interpreter: huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE at import.
IMGUTILS_SCRIPT = """
import json, sys
from imgutils.tagging import get_wd14_tags
gt, ct = float(sys.argv[1]), float(sys.argv[2])
for path in sys.argv[3:]:
    rating, general, character, emb = get_wd14_tags(
        path, model_name=%r, general_threshold=gt, character_threshold=ct,
        fmt=("rating", "general", "character", "embedding"))
    print(json.dumps({"path": path, "rating": rating, "general": general, "character": character,
                      "embedding_dim": int(emb.shape[0])}))
""" % MODEL_NAME


def _snapshot(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """The cache layout hf_hub_download resolves offline: refs/main -> snapshots/<rev>/FILES."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    for name, src in files.items():
        dst = repo / "snapshots" / REV / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REV)


@pytest.fixture(scope="module", params=[None, 448], ids=["native", "448px"])
def exported(request, faces_export):
    return faces_export(request.param)


def _imgutils_tags(model: Path, images: list[str], tmp: Path, gt: float, ct: float) -> list[dict]:
    pytest.importorskip("imgutils", reason="dghs-imgutils not installed (.ci/run installs it with --no-deps)")
    cache = tmp / "hf-cache"
    _snapshot(cache, MODEL_REPO, {f"{LABEL_REPO}/model.onnx": model / "model.onnx"})
    _snapshot(cache, LABEL_REPO, {"selected_tags.csv": model / "selected_tags.csv"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp / "hf-home"), HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1")
    proc = subprocess.run([sys.executable, "-c", IMGUTILS_SCRIPT, str(gt), str(ct), *images],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _our_tags(model: Path, images: list[str], gt: float, ct: float) -> list[dict]:
    proc = run_cli("tag", *images, "--model", str(model), "--exact", "-f", "jsonl", "-q",
                   "--general-threshold", str(gt), "--character-threshold", str(ct))
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.parametrize("character_threshold", [0.001, 0.2])
def test_get_wd14_tags_equals_animetagnet_tag_exact(exported, faces_run, real_images, tmp_path, character_threshold):
    model = exported
    _, _, test_faces = faces_run
    # Real 128 px faces from the held-out split and real 512 px letterboxed posts.
    images = test_faces[:16] + [str(p) for p in real_images[:8]]
    theirs = _imgutils_tags(model, images, tmp_path, 0.35, character_threshold)
    ours = _our_tags(model, images, 0.35, character_threshold)
    assert [t["path"] for t in theirs] == images and [o["path"] for o in ours] == images
    characters = set(Vocabulary.read_csv(model / "selected_tags.csv").names[4:])
    selected = 0
    for t, o in zip(theirs, ours):
        assert set(t["character"]) == set(o["tags"]["character"]), t["path"]
        assert set(t["character"]) <= characters
        for name, conf in t["character"].items():
            # Ours prints 4 decimals (rounding: at most 5e-5); the pixels and the network are the same.
            assert abs(conf - o["tags"]["character"][name]) <= 1e-4, (t["path"], name)
        assert t["general"] == {} and not o["tags"].get("general")  # faces: a character-only vocabulary
        # Untrained ratings are the constant 0 for imgutils; we show no rating for them.
        assert set(t["rating"]) == set(RATING_NAMES) and all(v == 0.0 for v in t["rating"].values())
        assert o["rating"] is None and o["ratings"] == {}
        assert t["embedding_dim"] > 0
        selected += len(t["character"])
    assert selected > 0  # the comparison saw selected tags, not only empty sets
    if character_threshold < 0.01:
        assert selected >= len(images) * len(characters) * 0.9  # nearly every confidence compared


def test_general_tags_and_trained_ratings_read_the_same(tmp_path, real_images):
    """The faces vocabulary has no general tags and no trained ratings: a WD-layout model with both
    (random weights, embedding output) shows imgutils reading those rows the way we do."""
    model = build_wd_model(tmp_path / "m", size=64, seed=5, embedding=True)
    images = [str(p) for p in real_images[:10]]
    theirs = _imgutils_tags(model, images, tmp_path, 0.3, 0.3)
    ours = _our_tags(model, images, 0.3, 0.3)
    n_general = 0
    for t, o in zip(theirs, ours):
        for kind in ("general", "character"):
            mine = o["tags"].get(kind, {})
            assert set(t[kind]) == set(mine), (t["path"], kind)
            assert all(abs(v - mine[k]) <= 1e-4 for k, v in t[kind].items())
        assert set(t["general"]) <= set(GENERAL) and set(t["character"]) <= set(CHARACTERS)
        assert set(t["rating"]) == set(o["ratings"]) == set(RATING_NAMES)
        assert all(abs(v - o["ratings"][k]) <= 1e-4 for k, v in t["rating"].items())
        assert max(t["rating"], key=t["rating"].get) == o["rating"]
        n_general += len(t["general"])
    assert n_general > 0
