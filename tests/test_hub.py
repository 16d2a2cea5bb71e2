"""The one Hub helper: cached snapshots that lack a required file are cache misses; every failure is one typed line.

Nothing here touches the network: caches are laid out by hand as huggingface_hub writes them,
and a "download" is `hf_hub_download` monkeypatched to write into that cache.
"""

from __future__ import annotations

import json
import shutil

import pytest

hf = pytest.importorskip("huggingface_hub")
httpx = pytest.importorskip("httpx")

from huggingface_hub import errors as hf_errors  # noqa: E402

from animetagnet import hub  # noqa: E402
from animetagnet.bundle import DEFAULT_MODEL, resolve_model  # noqa: E402
from animetagnet.cli import main  # noqa: E402
from cli_helpers import run_cli  # noqa: E402

REV = "0123456789abcdef0123456789abcdef01234567"


def snapshot(cache, repo_id, files):
    """models--owner--name/snapshots/<rev>/FILES plus refs/main, copied from `files` {name: source}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / REV
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    for name, src in files.items():
        shutil.copy(src, snap / name)
    return snap


class FakeHub:
    """hf_hub_download that answers cache look-ups for real and 'downloads' from a local repo copy."""

    def __init__(self, monkeypatch, remote: dict, fail: Exception | None = None):
        self.real = hf.hf_hub_download
        self.remote, self.fail, self.downloads = remote, fail, []
        monkeypatch.setattr(hf, "hf_hub_download", self)

    def __call__(self, repo_id, filename, *, cache_dir=None, local_files_only=False, **kw):
        if local_files_only:
            return self.real(repo_id, filename, cache_dir=cache_dir, local_files_only=True, **kw)
        self.downloads.append(filename)
        if self.fail is not None:
            raise self.fail
        if filename not in self.remote:
            raise hf_errors.RemoteEntryNotFoundError(f"404: {filename}", response=_response(404))
        dest = hf.constants.HF_HUB_CACHE if cache_dir is None else cache_dir
        snap = snapshot_dir(dest, repo_id)
        snap.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.remote[filename], snap / filename)
        return str(snap / filename)


def snapshot_dir(cache, repo_id):
    from pathlib import Path

    return Path(cache) / ("models--" + repo_id.replace("/", "--")) / "snapshots" / REV


def _response(status):
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/x"))


@pytest.fixture()
def imgutils_cache(tmp_path, tiny_model, monkeypatch):
    """The default model's cache entry as imgutils leaves it: selected_tags.csv only."""
    cache = tmp_path / "hub"
    snap = snapshot(cache, DEFAULT_MODEL, {"selected_tags.csv": tiny_model / "selected_tags.csv"})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("ANIMETAGNET_MODEL", raising=False)
    return cache, snap


def test_snapshot_without_model_onnx_is_a_cache_miss(imgutils_cache, tiny_model, monkeypatch, real_images, capsys):
    cache, snap = imgutils_cache
    fake = FakeHub(monkeypatch, {"model.onnx": tiny_model / "model.onnx", "selected_tags.csv": tiny_model / "selected_tags.csv"})
    assert main(["tag", str(real_images[0]), "-f", "jsonl"]) == 0  # the default model, no --model
    assert "model.onnx" in fake.downloads and (snap / "model.onnx").is_file()
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert record["rating"] in {"general", "sensitive", "questionable", "explicit"}
    # Now complete: later runs read the cache and never ask the Hub.
    fake.downloads.clear()
    assert resolve_model(DEFAULT_MODEL) == snap and fake.downloads == []


def test_offline_with_an_incomplete_snapshot_says_so(imgutils_cache, real_images):
    cache, _ = imgutils_cache
    proc = run_cli("tag", str(real_images[0]), env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert proc.returncode == 2 and proc.stdout == ""
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert f"{DEFAULT_MODEL}: model.onnx not in the Hugging Face cache and HF_HUB_OFFLINE is set" in line
    assert "--model /path/to/model-dir" in line


@pytest.mark.parametrize("error, says", [
    (lambda: hf_errors.GatedRepoError("403 gated", response=_response(403)), "is a gated repository"),
    (lambda: hf_errors.RepositoryNotFoundError("404 repo", response=_response(404)), "no such repository"),
    (lambda: hf_errors.RemoteEntryNotFoundError("404 file", response=_response(404)), "has no model.onnx"),
    (lambda: hf_errors.LocalEntryNotFoundError("connection refused"), "the Hub could not be reached (offline)"),
    (lambda: hf_errors.HfHubHTTPError("500 Server Error", response=_response(500)), "(HTTP 500: 500 Server Error)"),
], ids=["gated", "not-found", "file-missing", "unreachable", "http"])
def test_each_hub_failure_is_named_in_one_line(tmp_path, monkeypatch, error, says):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    FakeHub(monkeypatch, {}, fail=error())
    with pytest.raises(hub.HubError) as exc:
        resolve_model("someone/some-tagger")
    msg = str(exc.value)
    assert says in msg and "someone/some-tagger" in msg and "\n" not in msg


def test_optional_files_are_optional(tmp_path, tiny_model, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake = FakeHub(monkeypatch, {"model.onnx": tiny_model / "model.onnx", "selected_tags.csv": tiny_model / "selected_tags.csv"})
    snap = hub.fetch("someone/tagger", ["model.onnx", "selected_tags.csv"], ["animetagnet.json"], cache_dir=tmp_path)
    assert sorted(p.name for p in snap.iterdir()) == ["model.onnx", "selected_tags.csv"]
    assert fake.downloads == ["model.onnx", "selected_tags.csv", "animetagnet.json"]


def test_training_init_from_uses_the_same_helper(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from animetagnet_train import model as model_mod

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not read here")
    cache = tmp_path / "hub"
    snap = snapshot(cache, "timm/some-net", {"model.safetensors": weights})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_mod.resolve_init("timm/some-net") == (snap / "model.safetensors", None, None)
    with pytest.raises(hub.HubError, match="timm/other-net: model.safetensors not in the Hugging Face cache"):
        model_mod.resolve_init("timm/other-net")
