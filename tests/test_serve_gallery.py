"""The gallery: query parsing, incremental indexing into SQLite, search from the CLI and the web API."""

import json
import os
import shutil
import sqlite3

import pytest

from animetagnet import Tagger
from animetagnet.cli import main
from animetagnet.errors import UsageError
from animetagnet.serve.gallery import Gallery, index_folder
from animetagnet.serve.query import parse_query
from modelfactory import build_wd_model
from serve_helpers import LOCAL, jpeg_bytes, png_bytes, real_images

COLORS = [(220, 20, 20), (20, 200, 40), (30, 40, 230), (240, 240, 240), (10, 10, 10), (200, 180, 20)]


@pytest.fixture(scope="module")
def tagger(tiny_model):
    return Tagger(tiny_model)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "pics"
    (d / "sub").mkdir(parents=True)
    for i, c in enumerate(COLORS):
        (d / ("sub" if i % 2 else "") / f"img{i}.png").write_bytes(png_bytes((40 + i, 40), c))
    (d / "broken.jpg").write_bytes(jpeg_bytes()[:200])
    (d / "notes.txt").write_text("not an image")  # not an image extension: never looked at
    return d


def selected(tagger, path):
    return {name for name, _, _ in tagger.tag(str(path)).iter_tags()}


# --- query language -----------------------------------------------------------------
def test_parse_query():
    t = parse_query("1girl -smile long_hair:>0.8 blue_eyes:<0.2 rating:g,s -rating:explicit *_hair :d :d:>0.5")
    assert [(x.kind, x.value, x.negated, x.op, x.threshold) for x in t] == [
        ("tag", "1girl", False, None, None),
        ("tag", "smile", True, None, None),
        ("tag", "long_hair", False, ">", 0.8),
        ("tag", "blue_eyes", False, "<", 0.2),
        ("rating", {"general", "sensitive"}, False, None, None),
        ("rating", {"explicit"}, True, None, None),
        ("tag", "*_hair", False, None, None),
        ("tag", ":d", False, None, None),
        ("tag", ":d", False, ">", 0.5),
    ]
    assert parse_query("Irys_(Hololive) ninomae_ina'nis")[1].value == "ninomae_ina'nis"
    assert parse_query("") == []
    with pytest.raises(UsageError, match="unknown rating"):
        parse_query("rating:weird")
    with pytest.raises(UsageError, match="between 0 and 1"):
        parse_query("smile:>2")


# --- indexing -----------------------------------------------------------------------
def test_index_keeps_confidences_and_selection(tmp_path, folder, tagger):
    db = tmp_path / "g.db"
    report = index_folder(db, str(folder), tagger)
    assert (report.seen, report.tagged, report.failed) == (7, 6, 1)
    con = sqlite3.connect(db)
    rows = con.execute("SELECT f.path, t.tag, t.confidence, t.selected FROM tags t JOIN files f ON f.id = t.file_id").fetchall()
    err = con.execute("SELECT error FROM files WHERE path LIKE '%broken.jpg'").fetchone()[0]
    assert err and "cannot" in err
    img0 = str(folder / "img0.png")
    direct = tagger.tag(img0)
    stored = {tag: (conf, sel) for p, tag, conf, sel in rows if p == img0}
    for name, _, conf in direct.iter_tags():
        assert stored[name][1] == 1 and abs(stored[name][0] - conf) < 1e-4  # batch vs single: float noise
    assert all(conf >= 0.1 for conf, _ in stored.values())
    assert {t for t, (_, s) in stored.items() if s} == selected(tagger, img0)
    rating = con.execute("SELECT rating, rating_confidence FROM files WHERE path = ?", (img0,)).fetchone()
    assert rating == (direct.rating, pytest.approx(direct.ratings[direct.rating], abs=1e-4))


def test_index_is_incremental(tmp_path, folder, tagger):
    db = tmp_path / "g.db"
    index_folder(db, str(folder), tagger)
    again = index_folder(db, str(folder), tagger)
    assert (again.tagged, again.unchanged, again.failed) == (0, 7, 0)  # the broken file is remembered too
    # touched but identical: the hash says unchanged
    p = folder / "img0.png"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    # changed content, a copy of an indexed file, a deleted file
    (folder / "img2.png").write_bytes(png_bytes((50, 30), (100, 100, 100)))
    shutil.copy(folder / "sub" / "img1.png", folder / "copy.png")
    (folder / "img4.png").unlink()
    r = index_folder(db, str(folder), tagger)
    assert (r.tagged, r.copied, r.removed, r.unchanged) == (1, 1, 1, 5)
    g = Gallery(db)
    names = {it["name"] for it in g.search("", limit=100).items}
    assert "img4.png" not in names and "copy.png" in names
    copy = [it for it in g.search("", limit=100).items if it["name"] == "copy.png"][0]
    orig = [it for it in g.search("", limit=100).items if it["name"] == "img1.png"][0]
    assert copy["tags"] == orig["tags"]


def test_index_refuses_another_model(tmp_path, folder, tagger, tiny_model):
    db = tmp_path / "g.db"
    index_folder(db, str(folder), tagger)
    other = Tagger(build_wd_model(tmp_path / "other", size=32, seed=5))
    with pytest.raises(UsageError, match="indexed with model"):
        index_folder(db, str(folder), other)


# --- search ---------------------------------------------------------------------------
def test_search_matches_the_tagger(tmp_path, folder, tagger):
    db = tmp_path / "g.db"
    index_folder(db, str(folder), tagger)
    g = Gallery(db)
    imgs = sorted(p for p in folder.rglob("*.png"))
    tags = {p.name: selected(tagger, p) for p in imgs}
    results = {p.name: tagger.tag(str(p)) for p in imgs}
    vocab = sorted(set().union(*tags.values()))
    assert vocab, "the tiny model selected no tag at all"
    for tag in vocab:
        got = {it["name"] for it in g.search(tag, limit=100).items}
        assert got == {n for n, s in tags.items() if tag in s}, tag
        neg = {it["name"] for it in g.search(f"-{tag}", limit=100).items}
        assert neg == {n for n, s in tags.items() if tag not in s}, tag
    a, b = vocab[0], vocab[-1]
    both = {it["name"] for it in g.search(f"{a} {b}", limit=100).items}
    assert both == {n for n, s in tags.items() if a in s and b in s}
    for n, res in results.items():
        rated = {it["name"] for it in g.search(f"rating:{res.rating}", limit=100).items}
        assert n in rated
    # confidences: a threshold query agrees with the stored scores
    probs = {n: r.all_tags() for n, r in results.items()}
    high = {it["name"] for it in g.search(f"{a}:>0.9", limit=100).items}
    assert high == {n for n, p in probs.items() if p.get(a, 0) > 0.9}
    res = g.search("", limit=2, counts=5)
    assert res.total == 6 and len(res.items) == 2  # the broken file is never listed
    assert res.counts and res.counts[0]["count"] == max(sum(t in s for s in tags.values()) for t in vocab)


def test_cli_index_and_search_round_trip(tmp_path, folder, tiny_model, tagger, capsys):
    db = tmp_path / "cli.db"
    code = main(["index", str(folder), "--db", str(db), "--model", str(tiny_model), "--quiet"])
    assert code == 1  # one broken file, reported
    err = capsys.readouterr().err
    assert "broken.jpg" in err
    assert main(["index", str(folder), "--db", str(db), "--model", str(tiny_model)]) == 0
    assert "0 tagged, 7 unchanged" in capsys.readouterr().err
    tag = sorted(selected(tagger, folder / "img0.png"))[0]
    assert main(["search", "--db", str(db), tag, "--format", "paths"]) == 0
    paths = capsys.readouterr().out.split()
    assert str(folder / "img0.png") in paths
    assert main(["search", "--db", str(db), "--format", "json", "--", f"-{tag}"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert str(folder / "img0.png") not in [it["path"] for it in data["items"]]
    assert main(["search", "--db", str(db), "rating:nope"]) == 2
    assert main(["search", "--db", str(tmp_path / "missing.db"), "x"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.realdata
def test_real_images_round_trip(tmp_path, tagger):
    imgs = real_images()
    if not imgs:
        pytest.skip("../shared/data/danbooru-512px is absent (set ANIMETAGNET_DATA)")
    d = tmp_path / "real"
    d.mkdir()
    for p in imgs:
        os.symlink(p, d / p.name)
    db = tmp_path / "real.db"
    r = index_folder(db, str(d), tagger, allow_symlinks=True)  # links into the shared data: allowed explicitly
    assert r.tagged == len(imgs) and r.failed == 0
    res = Gallery(db).search("", limit=100)
    assert res.total == len(imgs)


# --- web API --------------------------------------------------------------------------
def test_gallery_api(tmp_path, folder, tagger):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from animetagnet.serve.app import create_app

    db = tmp_path / "g.db"
    index_folder(db, str(folder), tagger)
    with TestClient(create_app(tagger, gallery_db=str(db)), base_url=LOCAL) as c:
        body = c.get("/v1/gallery/search", params={"q": "", "limit": 3}).json()
        assert body["total"] == 6 and len(body["items"]) == 3 and body["counts"]
        assert all("path" not in it for it in body["items"])  # no server paths to clients
        tag = body["counts"][0]["tag"]
        hit = c.get("/v1/gallery/search", params={"q": tag}).json()
        assert hit["total"] == body["counts"][0]["count"]
        fid = hit["items"][0]["id"]
        detail = c.get(f"/v1/gallery/files/{fid}").json()
        assert any(t["tag"] == tag and t["selected"] for t in detail["tags"]) and "path" not in detail
        thumb = c.get(f"/v1/gallery/files/{fid}/thumb")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
        orig = c.get(f"/v1/gallery/files/{fid}/image")
        assert orig.status_code == 200 and orig.content[:4] == b"\x89PNG"
        for url in (f"/v1/gallery/files/999", f"/v1/gallery/files/999/thumb", f"/v1/gallery/files/999/image"):
            assert c.get(url).json()["error"]["code"] == "not_found"
        bad = c.get("/v1/gallery/search", params={"q": "rating:weird"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_query"
        assert c.get("/v1/gallery/files/abc").status_code == 422
    with TestClient(create_app(tagger), base_url=LOCAL) as c:
        resp = c.get("/v1/gallery/search")
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "no_gallery"
