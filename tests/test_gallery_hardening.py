"""The gallery against hostile files and queries: confinement at index and serve time, capped and budgeted queries."""

import os
import sqlite3
import time

import pytest

from animetagnet import Tagger
from animetagnet.cli import main
from animetagnet.serve.gallery import Gallery, Unavailable, connect, index_folder
from animetagnet.serve.query import MAX_TERMS, QueryTooExpensive, parse_query
from serve_helpers import LOCAL, ServerThread, jpeg_bytes, png_bytes


@pytest.fixture(scope="module")
def tagger(tiny_model):
    return Tagger(tiny_model)


@pytest.fixture
def setup(tmp_path, tagger):
    d = tmp_path / "pics"
    d.mkdir()
    for i, c in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200)]):
        (d / f"img{i}.png").write_bytes(png_bytes((40 + i, 40), c))
    (d / "broken.jpg").write_bytes(jpeg_bytes()[:200])
    secret = tmp_path / "secret.png"  # an image outside the folder: the link must not expose it
    secret.write_bytes(png_bytes((50, 50), (1, 2, 3)))
    os.symlink(secret, d / "secret.png")
    os.symlink("/etc/passwd", d / "passwd.jpg")
    db = tmp_path / "g.db"
    report = index_folder(db, str(d), tagger)
    return d, db, secret, report


def ids(db):
    con = sqlite3.connect(db)
    try:
        return {os.path.basename(p): i for i, p in con.execute("SELECT id, path FROM files")}
    finally:
        con.close()


def test_index_refuses_links_out_and_records_the_folder(setup, tagger, tmp_path):
    d, db, secret, report = setup
    assert report.tagged == 3 and report.failed == 3  # broken.jpg, and the two links out
    reasons = dict((os.path.basename(p), r) for p, r in report.errors)
    assert "symlink to outside" in reasons["passwd.jpg"] and "--allow-symlinks" in reasons["secret.png"]
    assert set(ids(db)) == {"img0.png", "img1.png", "img2.png", "broken.jpg"}
    assert [(r.path, r.allow_symlinks) for r in Gallery(db).roots()] == [(str(d), False)]
    # explicitly allowed: the link is indexed and the folder is recorded as allowing links
    db2 = tmp_path / "lax.db"
    r2 = index_folder(db2, str(d), tagger, allow_symlinks=True)
    assert r2.tagged == 4 and {os.path.basename(p) for p, _ in r2.errors} == {"broken.jpg", "passwd.jpg"}
    with Gallery(db2).open(ids(db2)["secret.png"])[0] as fh:
        assert fh.read() == secret.read_bytes()


def test_serve_refuses_swaps_errors_and_bad_ids(setup, tagger):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from animetagnet.serve.app import create_app

    d, db, secret, _ = setup
    fid = ids(db)
    with TestClient(create_app(tagger, gallery_db=str(db)), base_url=LOCAL) as c:
        ok = c.get(f"/v1/gallery/files/{fid['img0.png']}/image")
        assert ok.status_code == 200 and ok.content == (d / "img0.png").read_bytes()
        assert ok.headers["content-type"] == "image/png"
        # the row with an error is never served
        for suffix in ("", "/thumb", "/image"):
            r = c.get(f"/v1/gallery/files/{fid['broken.jpg']}{suffix}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "file_unavailable"
        # swap an indexed image for a symlink to a file outside, after indexing
        os.unlink(d / "img1.png")
        os.symlink(secret, d / "img1.png")
        for suffix in ("", "/thumb", "/image"):
            r = c.get(f"/v1/gallery/files/{fid['img1.png']}{suffix}")
            assert r.status_code == 403 and r.json()["error"]["code"] == "file_refused", suffix
            assert secret.read_bytes() not in r.content
        # ... or for a FIFO (would block a reader) inside the folder
        os.unlink(d / "img2.png")
        os.mkfifo(d / "img2.png")
        r = c.get(f"/v1/gallery/files/{fid['img2.png']}/image")
        assert r.status_code == 403 and "not a regular file" in r.json()["error"]["message"]
        os.unlink(d / "img0.png")
        r = c.get(f"/v1/gallery/files/{fid['img0.png']}/image")
        assert r.status_code == 404 and r.json()["error"]["code"] == "file_unavailable"
        for bad in ("99999999999999999999", "0", "-1", "abc", "1e3"):
            for suffix in ("", "/thumb", "/image"):
                r = c.get(f"/v1/gallery/files/{bad}{suffix}")
                assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", (bad, suffix)
        assert c.get("/v1/gallery/files/123456789/image").json()["error"]["code"] == "not_found"
        r = c.get("/v1/gallery/search", params={"offset": "99999999999999999999"})
        assert r.status_code == 422


def test_old_database_without_folders_serves_nothing(setup, tagger):
    d, db, _, _ = setup
    con = sqlite3.connect(db)
    con.execute("DROP TABLE roots")  # as written before folders were recorded
    con.commit()
    con.close()
    g = Gallery(db)
    with pytest.raises(Unavailable, match="no indexed folder") as exc:
        g.open(ids(db)["img0.png"])
    assert exc.value.status == 403
    assert g.search("").total == 3  # searching still works
    index_folder(db, str(d), tagger)  # re-indexing records the folder (and adds the table)
    g.open(ids(db)["img0.png"])[0].close()


def test_reindex_prunes_a_file_swapped_for_a_link(setup, tagger):
    d, db, secret, _ = setup
    os.unlink(d / "img0.png")
    os.symlink(secret, d / "img0.png")
    r = index_folder(db, str(d), tagger)
    assert "img0.png" not in ids(db) and r.removed == 1


# --- queries ------------------------------------------------------------------------------
def test_query_caps():
    parse_query(" ".join(f"t{i}" for i in range(MAX_TERMS)))
    with pytest.raises(QueryTooExpensive, match="terms"):
        parse_query(" ".join(f"t{i}" for i in range(MAX_TERMS + 1)))
    with pytest.raises(QueryTooExpensive, match="wildcard"):
        parse_query("*a* *b* *c* *d* *e*")
    with pytest.raises(QueryTooExpensive, match="too long"):
        parse_query("x" * 2001)


#: The costliest shape the caps allow: four negated wildcards (each scans every tag of every file) and 28 more terms.
COSTLY = "-*x*:>0.15 -*y*:>0.25 -*q*:>0.35 -*z*:>0.85 " + " ".join(f"-zz{i}" for i in range(28))


def big_gallery(path, files=20000, tags_per_file=30):
    """A database with many rows, written directly (no inference): a realistic cost for the planner."""
    con = connect(path)
    con.executemany("INSERT INTO files (id, path, size, mtime_ns, sha1, rating, rating_confidence, error, indexed_at) "
                    "VALUES (?, ?, 1, 1, 'x', 'general', 0.9, NULL, 0)",
                    [(i, f"/nowhere/f{i:06d}.png") for i in range(1, files + 1)])
    con.executemany("INSERT INTO tags VALUES (?, ?, 'general', ?, ?)",
                    [(i, f"tag_{(i * 7 + k * 13) % 997:03d}_name", 0.1 + (k % 9) / 10, int(k % 3 == 0))
                     for i in range(1, files + 1) for k in range(tags_per_file)])
    con.commit()
    con.close()
    return path


def test_query_budget_ends_an_expensive_search(tmp_path):
    db = big_gallery(tmp_path / "big.db")
    g = Gallery(db)
    res = g.search("tag_001_name", limit=5)
    assert res.total > 0 and len(res.items) == 5
    plain = g.search("tag_001_name", limit=5, offset=3)
    assert [it["id"] for it in plain.items] == [it["id"] for it in g.search("tag_001_name", limit=8).items][3:]
    costly = COSTLY
    small = Gallery(db, query_budget=2_000_000)
    start = time.process_time()
    with pytest.raises(QueryTooExpensive, match="too expensive"):
        small.search(costly)
    assert time.process_time() - start < 30  # bounded by the budget, not by the query
    for bad in ({"limit": 0}, {"offset": -1}, {"offset": 2**63}, {"limit": 10**20}):
        with pytest.raises(Exception, match="must be between"):
            g.search("", **bad)


def test_api_and_cli_give_one_error_for_expensive_queries(tmp_path, tagger, capsys):
    pytest.importorskip("fastapi")
    import httpx

    from animetagnet.serve.app import create_app

    db = big_gallery(tmp_path / "big.db", files=3000)
    app = create_app(tagger, gallery_db=str(db))
    app.state.service.gallery.query_budget = 1_500_000
    with ServerThread(app) as srv:  # a real server on loopback: the connection stays usable
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for q, code in ((" ".join(["x"] * 999), "query_too_expensive"), ("*a* " * 400, "query_too_expensive"),
                            ("x" * 5000, "query_too_expensive"),
                            (COSTLY, "query_too_expensive"),
                            ("rating:weird", "invalid_query")):
                r = c.get("/v1/gallery/search", params={"q": q})
                assert r.status_code == 400 and r.json()["error"]["code"] == code, (q[:20], r.text)
            assert c.get("/v1/gallery/search", params={"q": "tag_001_name"}).status_code == 200
    for args in ([" ".join(["x"] * 999)], ["*a* " * 400], ["x" * 5000], ["--offset", "99999999999999999999", ""],
                 ["--limit", "0", ""]):
        assert main(["search", "--db", str(db), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("animetagnet: error:") and len(err.splitlines()) == 1, err


def test_cli_index_allow_symlinks(setup, tiny_model, tmp_path, capsys):
    d, _, secret, _ = setup
    db = tmp_path / "cli.db"
    assert main(["index", str(d), "--db", str(db), "--model", str(tiny_model), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "passwd.jpg: a symlink to outside the allowed folder (index --allow-symlinks to take it)" in err
    assert "secret.png" not in ids(db)
    assert main(["index", str(d), "--db", str(db), "--model", str(tiny_model), "--quiet", "--allow-symlinks"]) == 1
    with Gallery(db).open(ids(db)["secret.png"])[0] as fh:
        assert fh.read() == secret.read_bytes()
    # /etc/passwd is no image: recorded with its error, and a row with an error is never served
    with pytest.raises(Unavailable, match="could not be read when it was indexed"):
        Gallery(db).open(ids(db)["passwd.jpg"])
