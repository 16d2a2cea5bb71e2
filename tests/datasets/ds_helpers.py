"""Helpers for the dataset-ingestion tests: the shared data location, the CLI runner, the Kaggle-layout builder."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def data_root() -> Path:
    return Path(os.environ.get("ANIMETAGNET_DATA", REPO.parent / "shared" / "data"))


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-m", "animetagnet", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def tag_categories(data_dir: Path, names: set[str]) -> dict[str, int]:
    out = {}
    with open(data_dir / "tags" / "danbooru_tags.csv", newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if row and row[0] in names:
                out[row[0]] = int(row[1])
    return out


def build_kaggle_tree(data_dir: Path, root: Path) -> dict:
    """A Kaggle tagged-anime-illustrations tree from the real 512px posts and record format.

    Doubled top folders (as unzipping produces), gwern buckets (id % 1000), one image stored
    under its md5 instead of its id, a malformed metadata line, a duplicated post line, posts
    whose image is missing, an image without a post, a truncated (unreadable) image, a child
    post of another post, and a moeimouto-faces part with numeric folder prefixes.
    """
    tagged = json.loads((data_dir / "danbooru-512px" / "tagged" / "tags.json").read_text())
    template = json.loads((data_dir / "danbooru-metadata" / "danbooru2017_format_record_263162.jsonl").read_text().splitlines()[0])
    real_lines = []
    for f in sorted((data_dir / "danbooru-metadata").glob("*.jsonl")):
        real_lines += [l for l in f.read_text().splitlines() if l.strip()]
    cats = tag_categories(data_dir, {t for tags in tagged.values() for t in tags})
    top = root / "kaggle" / "tagged-anime-illustrations"
    images = top / "danbooru-images" / "danbooru-images"
    meta = top / "danbooru-metadata" / "danbooru-metadata"
    meta.mkdir(parents=True)
    lines: list[str] = []
    info = {"posts": {}, "md5_named": None, "child": None, "parent": None}
    names = sorted(tagged)
    for i, fname in enumerate(names):
        post_id = int(Path(fname).stem)
        data = (data_dir / "danbooru-512px" / "tagged" / fname).read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        rec = dict(template)
        rec.update(id=str(post_id), md5=md5, parent_id="0")
        rec["tags"] = [{"id": "0", "name": t, "category": str(cats.get(t, 0))} for t in tagged[fname]]
        # Real posts carry meta tags; the vocabulary must drop them by default.
        rec["tags"].append({"id": "2", "name": "highres", "category": "5"})
        if i == 1:
            info["parent"] = str(post_id)
        if i == 2:
            rec["parent_id"] = info["parent"]
            info["child"] = str(post_id)
        bucket = images / f"{post_id % 1000:04d}"
        bucket.mkdir(parents=True, exist_ok=True)
        if i == 0:  # this one is stored under its md5, as some Kaggle copies are
            (bucket / f"{md5}.jpg").write_bytes(data)
            info["md5_named"] = str(post_id)
        else:
            (bucket / f"{post_id}.jpg").write_bytes(data)
        info["posts"][str(post_id)] = tagged[fname]
        lines.append(json.dumps(rec))
        if i == 3:
            lines.append('{"id":"99", "tags": [ this is not json')
            lines.append(json.dumps(rec))  # the same post twice
    lines.extend(real_lines)  # real records; their images are not in the set
    (meta / "201700.json").write_text("\n".join(lines[:6]) + "\n")
    (meta / "201701.json").write_text("\n".join(lines[6:]) + "\n")
    # An image without a post, and a post whose image is truncated.
    untagged = sorted((data_dir / "danbooru-512px" / "untagged").glob("*.jpg"))[0]
    (images / "0999").mkdir(exist_ok=True)
    shutil.copy(untagged, images / "0999" / untagged.name)
    broken_id = 5000999
    good = (data_dir / "danbooru-512px" / "tagged" / names[0]).read_bytes()
    (images / "0999" / f"{broken_id}.jpg").write_bytes(good[:600])
    rec = dict(template)
    rec.update(id=str(broken_id), md5="0" * 32, parent_id="0")
    with open(meta / "201701.json", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    info["broken"] = str(broken_id)
    info["unposted_image"] = untagged.name
    info["real_ids"] = [json.loads(l)["id"] for l in real_lines]
    # moeimouto-faces part, doubled as well, with the numeric prefixes of the real dataset.
    faces = top / "moeimouto-faces" / "moeimouto-faces"
    for k, char in enumerate(["gawr_gura", "irys_(hololive)"]):
        d = faces / f"{k:03d}_{char}"
        d.mkdir(parents=True)
        for src in sorted((data_dir / "faces" / char).glob("*.jpg"))[:6]:
            shutil.copy(src, d / src.name)
    return {"root": root / "kaggle", **info}




class MainResult:
    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_main(*args: str) -> MainResult:
    """The CLI in-process (same code path as `python -m animetagnet`, without the start-up cost)."""
    import contextlib
    import io

    from animetagnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 2
    return MainResult(rc, out.getvalue(), err.getvalue())
