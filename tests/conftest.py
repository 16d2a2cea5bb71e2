"""Shared fixtures: the real-data directory, tiny WD-layout models built on the fly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/modelfactory.py, tests/cli_helpers.py

from cli_helpers import data_dir  # noqa: E402
from modelfactory import build_wd_model  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = data_dir()
    if not (d / "danbooru-512px").is_dir():
        msg = f"real data not found at {d} (set ANIMETAGNET_DATA to the shared/data folder)"
        if os.environ.get("ANIMETAGNET_REQUIRE_DATA"):
            pytest.fail(msg)  # CI: real-data tests must never silently skip
        pytest.skip(msg)
    return d


@pytest.fixture(scope="session")
def real_images(shared_data) -> list[Path]:
    return sorted((shared_data / "danbooru-512px").rglob("*.jpg"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_wd_model(tmp_path_factory.mktemp("tiny") / "tiny", size=32)


@pytest.fixture(scope="session")
def model_224(tmp_path_factory) -> Path:
    return build_wd_model(tmp_path_factory.mktemp("m224") / "model", size=224, seed=3)


@pytest.fixture(scope="session")
def faces_run(tmp_path_factory, shared_data):
    """prepare -> smoke-train on 8 real faces per character: (run dir, dataset dir, test image paths).

    A trained model on real data for the tests that read exports with other tools' conventions."""
    import json
    import shutil

    pytest.importorskip("torch")
    from animetagnet.cli import main as cli_main
    from animetagnet_train import config
    from animetagnet_train.train import train

    base = tmp_path_factory.mktemp("faces-run")
    src = base / "faces-subset"
    for cls in sorted((shared_data / "faces").iterdir()):
        (src / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:8]:
            shutil.copy(f, src / cls.name / f.name)
    ds = base / "ds"
    assert cli_main(["prepare", str(src), "--out", str(ds), "--min-count", "1", "--split", "60/20/20",
                     "--no-plot", "-q"]) == 0
    train(ds, base / "run", config.load(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml",
                                        ["train.epochs=2"]))
    test_images = [json.loads(line)["image"] for line in (ds / "test.jsonl").read_text().splitlines()]
    return base / "run", ds, test_images


@pytest.fixture(scope="session")
def faces_export(faces_run):
    """faces_export(input_size=None): the faces run exported once per input size (with --comfyui beside it)."""
    from animetagnet_train import export

    run, _, _ = faces_run
    made: dict = {}

    def get(input_size: int | None = None) -> Path:
        if input_size not in made:
            out = run.parent / f"model-{input_size or 'native'}"
            export.export(run, out, input_size=input_size, comfyui_dir=run.parent / f"comfy-{input_size or 'native'}",
                          log=lambda m: None)
            made[input_size] = out
        return made[input_size]

    return get


# In CI (ANIMETAGNET_REQUIRE_DATA=1, set by .ci/run) nothing may skip for lack of data, a
# browser or an extra: those skips would hide untested parts. Only these reasons are allowed.
ALLOWED_CI_SKIPS = ("this machine has CUDA",)


def pytest_sessionfinish(session, exitstatus):
    if not os.environ.get("ANIMETAGNET_REQUIRE_DATA"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    bad = []
    for rep in skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if not any(ok in reason for ok in ALLOWED_CI_SKIPS):
            bad.append(f"{rep.nodeid}: {reason}")
    if bad:
        print("\nCI strict mode: these tests skipped, which CI does not allow:\n  " + "\n  ".join(bad))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
