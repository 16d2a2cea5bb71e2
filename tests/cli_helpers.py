"""Helpers shared by test modules (a uniquely named module: `conftest` is ambiguous with sub-folders)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("ANIMETAGNET_DATA", REPO.parent / "shared" / "data")).resolve()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run `python -m animetagnet ARGS` against this checkout's sources."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "animetagnet", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, input=input, timeout=300,
    )
