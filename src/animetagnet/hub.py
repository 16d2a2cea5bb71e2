"""The one Hugging Face Hub download: named files of a repo into the standard cache, typed failures in one line.

`fetch` is used for tagging models (bundle.py) and for training checkpoints (animetagnet_train).
It works file by file (`hf_hub_download`), so a cached snapshot counts only when it holds
every required file: a snapshot that other tools left with `selected_tags.csv` alone (imgutils
does) is a cache miss, and the missing files are downloaded. With the cache complete, nothing
touches the network. `HF_HUB_OFFLINE` and `HF_HUB_CACHE` are read when `fetch` runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import ModelError


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubError(ModelError):
    """A Hub repo could not be made available locally: not found, gated, offline, a file missing, HTTP."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _cache_dir(cache_dir: str | os.PathLike | None) -> str | None:
    return os.fspath(cache_dir) if cache_dir else os.environ.get("HF_HUB_CACHE") or None


def _hub(repo_id: str):
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(
            f"{repo_id!r} looks like a Hugging Face repo id, but huggingface_hub is not installed: "
            "pip install 'animetagnet[hub]', or download the repository and pass its directory"
        ) from None
    return huggingface_hub


def _local(hub, repo_id: str, filename: str, cache_dir: str | None) -> Path | None:
    """The cached file, or None on a cache miss (no network)."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    try:
        return Path(hub.hf_hub_download(repo_id, filename, cache_dir=cache_dir, local_files_only=True))
    except LocalEntryNotFoundError:
        return None


def describe(exc: BaseException, repo_id: str, filename: str, missing: Sequence[str] = ()) -> str:
    """One line saying which Hub failure `exc` is, and what to do about it."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline_hint = "download the repository elsewhere and pass its directory: --model /path/to/model-dir"
    lacks = ", ".join(missing or [filename])
    if isinstance(exc, LocalEntryNotFoundError):  # the cache lacks it and the Hub was not (or could not be) asked
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached"
        return f"{repo_id}: {lacks} not in the Hugging Face cache and {why} (offline); {offline_hint}"
    if isinstance(exc, GatedRepoError):
        return (f"{repo_id} is a gated repository on the Hugging Face Hub: accept its terms on "
                f"https://huggingface.co/{repo_id} and log in (`hf auth login` or HF_TOKEN)")
    if isinstance(exc, RepositoryNotFoundError):
        return (f"{repo_id}: no such repository on the Hugging Face Hub "
                "(check the id; a private one needs `hf auth login` or HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return f"{repo_id}: the requested revision does not exist on the Hugging Face Hub"
    if isinstance(exc, EntryNotFoundError):
        return f"{repo_id} has no {filename} on the Hugging Face Hub"
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"could not download {filename} of {repo_id} from the Hugging Face Hub (HTTP {status}: {first})"
    if isinstance(exc, OSError):
        return f"could not store {filename} of {repo_id} in the Hugging Face cache: {exc}"
    raise exc


def fetch(
    repo_id: str,
    required: Sequence[str],
    optional: Sequence[str] = (),
    *,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """The local snapshot directory of `repo_id` holding every `required` file.

    From the cache alone when it holds them all (then `optional` files are taken if cached);
    else every required file is downloaded (files already cached cost a metadata request),
    plus the `optional` ones the repo has. Raises HubError with one line naming the failure.
    """
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    hub = _hub(repo_id)
    cache = _cache_dir(cache_dir)
    local = {f: _local(hub, repo_id, f, cache) for f in required}
    missing = [f for f, p in local.items() if p is None]
    if not missing:
        snapshot = next(iter(local.values())).parent
        if len({p.parent for p in local.values()}) == 1:
            return snapshot
        missing = list(required)  # files of different revisions: fetch one consistent snapshot
    if _offline():
        raise HubError(describe(LocalEntryNotFoundError("offline"), repo_id, missing[0], missing))
    paths = {}
    for f in required:
        try:
            paths[f] = Path(hub.hf_hub_download(repo_id, f, cache_dir=cache))
        except (HfHubHTTPError, LocalEntryNotFoundError, EntryNotFoundError, OSError) as exc:
            raise HubError(describe(exc, repo_id, f, missing if isinstance(exc, LocalEntryNotFoundError) else ())) from None
    snapshot = paths[required[0]].parent
    for f in optional:
        try:
            hub.hf_hub_download(repo_id, f, cache_dir=cache)
        except EntryNotFoundError:
            pass  # optional: most repos lack some of them
        except (HfHubHTTPError, OSError) as exc:
            raise HubError(describe(exc, repo_id, f)) from None
    return snapshot


def looks_like_repo_id(text: str) -> bool:
    """`owner/name` with Hub-legal characters, not a relative or absolute path."""
    return bool(_REPO_ID.match(text)) and not text.startswith((".", "/"))
