"""The review app when the disk refuses: a caption that cannot be written, a bad --db or --json path, odd ids.

In process (ReviewSession without a model): fast, and a failing write is injected exactly where
the atomic writer would meet a full or read-only disk.
"""

import errno
import io
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from animetagnet.errors import UsageError
from animetagnet.serve.review import captions
from animetagnet.serve.review.session import Filter, ReviewError, ReviewSession
from modelfactory import build_wd_model
from review_helpers import env, make_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_wd_model(tmp_path_factory.mktemp("model") / "tiny", size=32)


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "pics")


@pytest.fixture
def session(folder):
    s = ReviewSession(folder, None, suggest=False)
    yield s
    s.close()


def refuse(monkeypatch, *names, err=errno.ENOSPC):
    """Make the atomic write of the named caption files (all, if none named) fail like a full disk."""
    real = captions.atomic_write_text

    def write(path, text, *a, **kw):
        if not names or path.name in names:
            raise OSError(err, "No space left on device" if err == errno.ENOSPC else "Read-only file system")
        return real(path, text, *a, **kw)

    monkeypatch.setattr(captions, "atomic_write_text", write)


def by_name(session, name):
    return next(it for it in session.items.values() if it.image == name)


def states(session):
    return [r[0] for r in session.con.execute("SELECT state FROM batches ORDER BY id")]


def test_a_caption_that_cannot_be_written_is_a_507_and_the_edit_stays_in_the_history(session, folder, monkeypatch):
    refuse(monkeypatch, "img1.txt")
    it = by_name(session, "img1.jpg")
    with pytest.raises(ReviewError) as e:
        session.edit(it.id, it.version, "add", tag="smile")
    assert e.value.status == 507 and e.value.code == "write_failed"
    assert "img1.txt" in e.value.message and "No space left" in e.value.message and "\n" not in e.value.message
    assert (folder / "img1.txt").read_text() == "long hair, blue eyes\n"        # untouched
    assert by_name(session, "img1.jpg").tags == ["long hair", "blue eyes"]       # the DB agrees with the disk
    assert states(session) == ["failed"]                                         # not undoable, but kept
    wanted = session.con.execute("SELECT after FROM edits").fetchone()[0]
    assert "smile" in wanted
    with pytest.raises(ReviewError) as e:
        session.undo()
    assert e.value.code == "nothing_to_undo"
    monkeypatch.undo()                                                           # the disk has room again
    it = by_name(session, "img1.jpg")
    session.edit(it.id, it.version, "add", tag="smile")
    assert (folder / "img1.txt").read_text() == "long hair, blue eyes, smile\n"


def test_a_bulk_edit_commits_the_files_it_wrote_and_skips_the_rest(session, folder, monkeypatch):
    refuse(monkeypatch, "img4.txt")
    r = session.bulk(Filter(), "add", "new_tag")
    wrote = ("broken.jpg", "img0.jpg", "img1.jpg", "img3.jpg", "img5.jpg")  # img2 is not UTF-8: never written
    assert r["changed"] == len(wrote) and r["batch"] is not None
    assert [s["name"] for s in r["skipped"] if "write" in s["reason"]] == ["img4.jpg"]
    assert (folder / "img4.txt").read_text() == "1girl, solo\n"
    assert (folder / "img5.txt").read_text() == "1girl, solo, new_tag\n"  # after the failure: still written
    for name in wrote:                                                     # journal == disk
        assert "new_tag" in by_name(session, name).keys
    assert "new_tag" not in by_name(session, "img4.jpg").keys
    assert states(session) == ["applied", "failed"]
    assert session.con.execute("SELECT COUNT(*) FROM edits WHERE batch = ?", (r["batch"],)).fetchone()[0] == len(wrote)
    # the undo reverts exactly what was written
    monkeypatch.undo()
    u = session.undo()
    assert sorted(u["items"]) == sorted(by_name(session, n).id for n in wrote)
    assert (folder / "img5.txt").read_text() == "1girl, solo\n" and not (folder / "img3.txt").exists()


def test_a_bulk_edit_that_writes_nothing_is_a_507_and_keeps_the_redo_stack(session, folder, monkeypatch):
    it = by_name(session, "img0.jpg")
    session.edit(it.id, it.version, "add", tag="smile_2")
    session.undo()
    refuse(monkeypatch, err=errno.EROFS)
    with pytest.raises(ReviewError) as e:
        session.bulk(Filter(), "add", "new_tag")
    assert e.value.status == 507 and "Read-only" in e.value.message
    assert states(session) == ["undone", "failed"]                         # redo still possible
    assert (folder / "img0.txt").read_text() == "1girl, long_hair, smile\n"
    monkeypatch.undo()
    assert session.redo()["redone"]


def test_an_undo_that_cannot_write_leaves_the_batch_as_it_was(session, folder, monkeypatch):
    r = session.bulk(Filter(), "add", "new_tag")
    refuse(monkeypatch, "img0.txt")
    u = session.undo()                                                     # partly: the others are reverted
    assert [s["id"] for s in u["skipped"]] == [by_name(session, "img0.jpg").id]
    assert (folder / "img0.txt").read_text() == "1girl, long_hair, smile, new_tag\n"
    assert "new_tag" in by_name(session, "img0.jpg").keys                  # journal == disk
    assert (folder / "img1.txt").read_text() == "long hair, blue eyes\n"
    assert states(session) == ["undone", "failed"]
    refuse(monkeypatch)                                                    # now nothing can be written
    with pytest.raises(ReviewError) as e:
        session.redo()
    assert e.value.status == 507 and e.value.code == "write_failed"
    assert states(session)[r["batch"] - 1] == "undone"                     # still redo-able
    assert (folder / "img1.txt").read_text() == "long hair, blue eyes\n"


def test_a_db_that_cannot_be_opened_is_one_line(folder, tmp_path):
    (tmp_path / "afile").write_text("x")
    for db, why in ((tmp_path / "afile" / "x.db", "is not a directory"), (tmp_path, "unable to open")):
        with pytest.raises(UsageError) as e:
            ReviewSession(folder, None, db=db, suggest=False)
        assert why in str(e.value) and str(db) in str(e.value)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "animetagnet", *map(str, args)], env=env(), capture_output=True,
                          text=True, timeout=120)


def test_review_report_refuses_a_bad_db_or_json_before_any_work(folder, model, tmp_path):
    (tmp_path / "afile").write_text("x")
    r = run_cli("review-report", folder, "--model", model, "--db", tmp_path / "afile" / "x.db")
    assert r.returncode == 2 and "is not a directory" in r.stderr and "Traceback" not in r.stderr
    # the folder has no review yet: without the probe the error would be "no image was reviewed"
    for target, why in ((tmp_path / "afile" / "report.json", "is not a directory"), (tmp_path, "is a directory")):
        r = run_cli("review-report", folder, "--model", model, "--json", target)
        assert r.returncode == 2 and why in r.stderr and str(target) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


class Shrinking(io.FileIO):
    """An image file cut to 1000 bytes at the first read: after the response announced its length."""

    def read(self, n=-1):
        if not getattr(self, "cut", False):
            os.truncate(self.name, 1000)
            self.cut = True
        return super().read(n)


def test_images_are_streamed_and_a_file_that_shrinks_meanwhile_closes_the_connection(folder, model, tmp_path,
                                                                                       monkeypatch, caplog):
    import httpx

    from animetagnet import Tagger
    from animetagnet.serve.review.routes import create_review_app
    from serve_helpers import ServerThread

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big)
    session = ReviewSession(folder, None, suggest=False)
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.addHandler(caplog.handler)
    try:
        with ServerThread(create_review_app(session, Tagger(model))) as srv, \
                httpx.Client(base_url=srv.url, timeout=20) as client:
            it = by_name(session, "img0.jpg")
            r = client.get(f"/v1/review/items/{it.id}/image")
            assert r.status_code == 200 and r.content == (folder / "img0.jpg").read_bytes()
            assert r.headers["content-length"] == str(len(r.content)) and r.headers["content-type"] == "image/jpeg"
            # ids beyond SQLite's 64-bit integers are a 422, not an OverflowError
            assert client.get("/v1/review/history", params={"item": 2**63}).status_code == 422
            assert client.get("/v1/review/history", params={"item": it.id}).status_code == 200

            size = big.stat().st_size
            monkeypatch.setattr(session, "open_image", lambda item_id: (Shrinking(big, "rb"), "big.png"))
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                with client.stream("GET", f"/v1/review/items/{it.id}/image") as r:
                    assert r.headers["content-length"] == str(size)
                    with pytest.raises(httpx.RemoteProtocolError):  # a short body, never a padded one
                        r.read()
                deadline = time.time() + 10
                while not any("shrank" in rec.getMessage() for rec in caplog.records) and time.time() < deadline:
                    time.sleep(0.05)
            assert any("big.png: the file shrank" in rec.getMessage() for rec in caplog.records)
            assert not [rec for rec in caplog.records if rec.exc_info], [rec.getMessage() for rec in caplog.records]
            monkeypatch.undo()
            assert client.get("/v1/review/status").status_code == 200     # the server goes on
    finally:
        uvicorn_log.removeHandler(caplog.handler)
        session.close()
