"""Shared fixtures: the real-data directory, tiny WD-layout models built on the fly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/modelfactory.py

from modelfactory import build_wd_model  # noqa: E402


def data_dir() -> Path:
    return Path(os.environ.get("ANIMETAGNET_DATA", REPO.parent / "shared" / "data")).resolve()


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
    return build_wd_model(tmp_path_factory.mktemp("tiny") / "model", size=32)


@pytest.fixture(scope="session")
def model_224(tmp_path_factory) -> Path:
    return build_wd_model(tmp_path_factory.mktemp("m224") / "model", size=224, seed=3)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m animetagnet ARGS` against this checkout's sources."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "animetagnet", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, input=input, timeout=300,
    )
