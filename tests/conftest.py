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
