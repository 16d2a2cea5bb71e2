"""`animetagnet review` over HTTP, as a real process on 127.0.0.1: edits, bulk edits, undo/redo, conflicts, kill -9, report."""

import json
import shutil
import subprocess
import sys

import pytest

from modelfactory import build_wd_model
from review_helpers import NOT_UTF8, ReviewServer, env, make_folder

pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_wd_model(tmp_path_factory.mktemp("model") / "tiny", size=32)


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "pics")


def caption(folder, name):
    return (folder / name).read_text(encoding="utf-8")


def edit(srv, item, **change):
    return srv.post(f"/v1/review/items/{item['id']}/edit", json={"version": item["version"], **change})


def test_listing_reports_problems_and_never_rewrites_a_non_utf8_caption(folder, model):
    with ReviewServer(folder, model) as srv:
        status = srv.get("/v1/review/status").json()
        assert status["images"] == 7 and status["suggestions_ready"] == 6
        assert status["unreadable_images"] == 1 and status["unreadable_captions"] == 1 and status["missing_captions"] == 2
        problems = {it["name"]: it["problem"] for it in
                    srv.get("/v1/review/items", params={"problems": "true"}).json()["items"]}
        assert set(problems) == {"broken.jpg", "img2.jpg", "img3.jpg"}
        assert "not an image" in problems["broken.jpg"]                 # listed with its reason, not hidden
        assert "not UTF-8" in problems["img2.jpg"] and problems["img3.jpg"] == "no caption file"

        bad = srv.item_by_name("img2.jpg")
        r = edit(srv, bad, op="add", tag="smile")
        assert r.status_code == 409 and r.json()["error"]["code"] == "caption_unreadable"
        r = srv.post("/v1/review/bulk", json={"op": "add", "tag": "new_tag"})
        assert r.status_code == 200 and [s["id"] for s in r.json()["skipped"]] == [bad["id"]]
        assert (folder / "img2.txt").read_bytes() == NOT_UTF8           # never rewritten
        # no client path is ever opened: ids only, unknown ids and path-like ids are refused
        assert srv.get("/v1/review/items/999/image").status_code == 404
        assert srv.get("/v1/review/items/..%2F..%2Fetc%2Fpasswd/image").status_code in (404, 422)
        assert srv.get(f"/v1/review/items/{srv.item_by_name('broken.jpg')['id']}/thumb").status_code == 404


def test_edits_keep_the_files_style_and_stale_versions_are_refused(folder, model):
    with ReviewServer(folder, model) as srv:
        it = srv.item_by_name("img1.jpg")
        assert [c["text"] for c in it["caption"]] == ["long hair", "blue eyes"]
        r = edit(srv, it, op="add", tag="very_long_hair")
        assert r.status_code == 200, r.text
        assert caption(folder, "img1.txt") == "long hair, blue eyes, very long hair\n"   # spaces, as the file had
        after = r.json()
        assert edit(srv, it, op="add", tag="solo").status_code == 409            # the old version: stale
        r = edit(srv, after, op="move", tag="very long hair", index=0)
        assert caption(folder, "img1.txt") == "very long hair, long hair, blue eyes\n"
        r = edit(srv, r.json(), op="remove", tag="blue_eyes")
        assert caption(folder, "img1.txt") == "very long hair, long hair\n"
        missing = srv.item_by_name("img3.jpg")
        r = edit(srv, missing, op="add", tag="1girl")
        assert r.status_code == 200 and caption(folder, "img3.txt") == "1girl\n"  # a new caption file
        marks = {c["tag"]: c["mark"] for c in r.json()["caption"]}
        model_marks = {m["tag"]: m["mark"] for m in r.json()["model"]}
        assert set(marks.values()) <= {"both", "caption"} and set(model_marks.values()) <= {"both", "model", "below"}
        assert all(model_marks[t] == "both" for t, m in marks.items() if m == "both")
        # the undo of a first edit removes the caption file it created
        assert srv.post("/v1/review/undo").status_code == 200
        assert not (folder / "img3.txt").exists()
        for bad in ({"op": "add", "tag": ""}, {"op": "add", "tag": "a,b"}, {"op": "explode", "tag": "x"}):
            assert edit(srv, srv.item_by_name("img0.jpg"), **bad).status_code in (400, 422)


def test_bulk_rename_on_a_filtered_selection_then_undo_and_redo(folder, model):
    with ReviewServer(folder, model) as srv:
        before = {n: caption(folder, n) for n in ("img0.txt", "img1.txt", "img4.txt", "img5.txt")}
        sel = srv.get("/v1/review/items", params={"tag": "long_hair"}).json()
        assert {it["name"] for it in sel["items"]} == {"img0.jpg", "img1.jpg"}
        r = srv.post("/v1/review/bulk", json={"op": "rename", "tag": "long_hair", "new": "short_hair",
                                              "filter": {"tag": "long_hair", "missing": "blue_eyes"}})
        assert r.status_code == 200 and r.json()["changed"] == 1, r.text
        assert caption(folder, "img0.txt") == "1girl, short_hair, smile\n"
        assert caption(folder, "img1.txt") == before["img1.txt"]        # outside the selection
        r = srv.post("/v1/review/bulk", json={"op": "replace", "tag": "solo", "new": "1boy, multiple_boys"})
        assert r.json()["changed"] == 2
        assert caption(folder, "img4.txt") == "1girl, 1boy, multiple_boys\n"
        freq = {t["tag"]: t["count"] for t in srv.get("/v1/review/tags").json()["tags"]}
        assert freq["1boy"] == 2 and freq["short_hair"] == 1 and freq.get("solo", 0) == 0 and freq["1girl"] == 3

        assert srv.post("/v1/review/undo").json()["op"] == "bulk_replace"
        assert caption(folder, "img4.txt") == before["img4.txt"] and caption(folder, "img5.txt") == before["img5.txt"]
        assert srv.post("/v1/review/undo").json()["op"] == "bulk_rename"
        assert caption(folder, "img0.txt") == before["img0.txt"]
        assert srv.post("/v1/review/undo").status_code == 409           # nothing left to undo
        assert srv.post("/v1/review/redo").json()["op"] == "bulk_rename"
        assert caption(folder, "img0.txt") == "1girl, short_hair, smile\n"
        # a new edit drops the redo stack (but keeps it in the journal)
        edit(srv, srv.item_by_name("img5.jpg"), op="add", tag="smile")
        assert srv.post("/v1/review/redo").status_code == 409
        history = srv.get("/v1/review/history").json()["history"]
        assert [(b["op"], b["state"]) for b in history[:3]] == [("add", "applied"), ("bulk_replace", "dropped"),
                                                                ("bulk_rename", "applied")]


def test_a_caption_changed_on_disk_is_reloaded_never_overwritten(folder, model):
    with ReviewServer(folder, model) as srv:
        it = srv.item_by_name("img0.jpg")
        (folder / "img0.txt").write_text("edited, elsewhere\n", encoding="utf-8")
        r = edit(srv, it, op="add", tag="blue_eyes")
        assert r.status_code == 409 and r.json()["error"]["code"] == "changed_on_disk"
        details = r.json()["error"]["details"]
        assert details["disk_tags"] == ["edited", "elsewhere"]
        assert details["your_tags"] == ["1girl", "long_hair", "smile", "blue_eyes"]   # what was typed, kept
        assert caption(folder, "img0.txt") == "edited, elsewhere\n"
        fresh = srv.item_by_name("img0.jpg")
        assert [c["text"] for c in fresh["caption"]] == ["edited", "elsewhere"]
        history = srv.get("/v1/review/history", params={"item": it["id"]}).json()["history"]
        assert [h["state"] for h in history[:2]] == ["conflict", "reload"]
        assert history[0]["edits"][0]["after"] == details["your_tags"]
        # bulk edits and undo check the disk too
        r = edit(srv, fresh, op="add", tag="smile")
        assert r.status_code == 200
        (folder / "img0.txt").write_text("changed, again\n", encoding="utf-8")
        r = srv.post("/v1/review/undo").json()
        assert r["conflicts"] and caption(folder, "img0.txt") == "changed, again\n"
        (folder / "img4.txt").write_text("1girl, solo, outside\n", encoding="utf-8")
        r = srv.post("/v1/review/bulk", json={"op": "remove", "tag": "solo"}).json()
        assert [c["name"] for c in r["conflicts"]] == ["img4.jpg"] and r["changed"] == 1
        assert caption(folder, "img4.txt") == "1girl, solo, outside\n" and caption(folder, "img5.txt") == "1girl\n"


def test_the_journal_survives_kill_9(folder, model):
    srv = ReviewServer(folder, model).wait()
    try:
        it = srv.item_by_name("img0.jpg")
        r = edit(srv, it, op="accept", tag="blue_eyes")
        assert r.status_code == 200
        r = edit(srv, r.json(), op="reject", tag="smile")
        assert caption(folder, "img0.txt") == "1girl, long_hair, blue_eyes\n"
        srv.post("/v1/review/bulk", json={"op": "add", "tag": "highres"})
    finally:
        srv.kill9()                                                     # no shutdown, no flush
    (folder / "img5.txt").write_text("changed while down\n", encoding="utf-8")
    with ReviewServer(folder, model) as srv2:
        history = srv2.get("/v1/review/history").json()["history"]
        ops = [h["op"] for h in history if h["state"] == "applied"]
        assert ops[:3] == ["bulk_add", "reject", "accept"]
        assert any(h["state"] == "reload" and "img5.jpg" in h["summary"] for h in history)
        assert srv2.item_by_name("img5.jpg")["tags"] == ["changed while down"]
        assert {"blue_eyes": "accept", "smile": "reject"}.items() <= {
            c["tag"]: c["verdict"] for c in srv2.item_by_name("img0.jpg")["caption"] + srv2.item_by_name("img0.jpg")["model"]
            if c["verdict"]}.items()
        r = srv2.post("/v1/review/undo").json()                         # undo still works after the restart
        # img5's caption was reloaded from disk at the restart: its part of the bulk edit is left alone
        assert r["op"] == "bulk_add" and [s["id"] for s in r["skipped"]] == [srv2.item_by_name("img5.jpg")["id"]]
        assert caption(folder, "img5.txt") == "changed while down\n"
        assert "highres" not in caption(folder, "img0.txt")
        srv2.post("/v1/review/undo")
        assert caption(folder, "img0.txt") == "1girl, long_hair, smile, blue_eyes\n"


def test_autocomplete_from_the_model_and_a_danbooru_table(folder, model, tmp_path):
    table = tmp_path / "tags.csv"
    table.write_text('long_hair,0,5000000,"/lh,longhair"\nlong_sleeves,0,4000000,\nlonginus,1,10,\n'
                     'hatsune_miku,4,300000,"miku"\n', encoding="utf-8")
    with ReviewServer(folder, model, "--tag-table", str(table)) as srv:
        import time

        for _ in range(50):  # the table loads in the background
            got = srv.get("/v1/review/complete", params={"q": "long"}).json()["completions"]
            if any(c["tag"] == "long_sleeves" for c in got):
                break
            time.sleep(0.1)
        tags = [c["tag"] for c in got]
        assert tags[0] == "long_hair" and got[0]["in_model"]           # the model's vocabulary first
        assert tags.index("long_sleeves") < tags.index("longinus")     # then the table by post count
        alias = srv.get("/v1/review/complete", params={"q": "mik"}).json()["completions"]
        assert alias and alias[0]["tag"] == "hatsune_miku"


def test_filters_and_sorts(folder, model):
    with ReviewServer(folder, model) as srv:
        items = srv.get("/v1/review/items", params={"limit": 100}).json()
        assert [it["name"] for it in items["items"]] == sorted(it["name"] for it in items["items"])
        by_tags = srv.get("/v1/review/items", params={"sort": "tags", "descending": "true"}).json()["items"]
        assert by_tags[0]["name"] == "img0.jpg"
        dis = srv.get("/v1/review/items", params={"sort": "disagreement"}).json()["items"]
        values = [it["disagreement"] or 0 for it in dis]
        assert values == sorted(values, reverse=True)
        assert all(it["disagreement"] for it in srv.get("/v1/review/items", params={"disagree": "true"}).json()["items"])
        low = srv.get("/v1/review/items", params={"low": 0.99}).json()["items"]
        assert low and all(it["certainty"] < 0.99 for it in low)
        missing = srv.get("/v1/review/items", params={"missing": "1girl"}).json()["items"]
        assert "img0.jpg" not in {it["name"] for it in missing} and "img1.jpg" in {it["name"] for it in missing}
        assert srv.get("/v1/review/items", params={"sort": "nope"}).status_code == 422


def test_review_report_and_recalibrated_thresholds(folder, model, tmp_path):
    from animetagnet import Tagger

    with ReviewServer(folder, model) as srv:
        for name in ("img0.jpg", "img1.jpg", "img4.jpg", "img5.jpg"):
            it = srv.item_by_name(name)
            suggested = [m["tag"] for m in it["model"] if m["mark"] == "model"]
            if suggested:
                it = srv.post(f"/v1/review/items/{it['id']}/edit",
                              json={"version": it["version"], "op": "accept", "tag": suggested[0]}).json()
            if len(suggested) > 1:
                it = srv.post(f"/v1/review/items/{it['id']}/edit",
                              json={"version": it["version"], "op": "reject", "tag": suggested[1]}).json()
            srv.post(f"/v1/review/items/{it['id']}/edit", json={"version": it["version"], "op": "confirm"})
    out = tmp_path / "reviewed-model"
    r = subprocess.run([sys.executable, "-m", "animetagnet", "review-report", str(folder), "--model", str(model),
                        "--out", str(out), "--json", str(tmp_path / "report.json"), "--min-support", "1"],
                       env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["judged_images"] == 4 and report["verdicts"]["accepted"] >= 1
    row = {d["tag"]: d for d in report["per_tag"]}
    for d in row.values():
        assert d["tp"] + d["fn"] == d["support"] and d["tp"] + d["fp"] == d["suggested"]
    meta = json.loads((out / "animetagnet.json").read_text())
    assert meta["thresholds"]["default"] == "balanced" and meta["thresholds"]["calibration"]["source"] == "review"
    assert not (model / "animetagnet.json").exists() or "review" not in (model / "animetagnet.json").read_text()
    Tagger(out)  # the re-calibrated copy loads
    assert "judged image(s)" in r.stdout
    # nothing reviewed: a one-line error
    empty = make_folder(tmp_path / "empty")
    r = subprocess.run([sys.executable, "-m", "animetagnet", "review-report", str(empty), "--model", str(model)],
                       env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no image was reviewed" in r.stderr and "Traceback" not in r.stderr
    shutil.rmtree(empty)


def test_the_review_server_has_the_services_host_and_origin_rules(folder, model):
    with ReviewServer(folder, model) as srv:
        it = srv.item_by_name("img0.jpg")
        body = {"version": it["version"], "op": "add", "tag": "evil"}
        r = srv.post(f"/v1/review/items/{it['id']}/edit", json=body, headers={"Origin": "http://attacker.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
        r = srv.get("/v1/review/items", headers={"Host": "attacker.example"})   # DNS rebinding
        assert r.status_code == 400 and r.json()["error"]["code"] == "untrusted_host"
        assert "evil" not in caption(folder, "img0.txt")
        r = srv.post(f"/v1/review/items/{it['id']}/edit", json=body, headers={"Origin": srv.url})   # the page itself
        assert r.status_code == 200 and "evil" in caption(folder, "img0.txt")


def test_without_model_runs_unreadable_images_are_still_listed_with_their_reason(folder):
    from animetagnet.serve.review.session import Filter, ReviewSession

    session = ReviewSession(folder, None, db=folder.parent / "j.db")
    try:
        items = {it["name"]: it for it in session.list_items(Filter.make(problems=True))["items"]}
        assert "not an image" in items["broken.jpg"]["problem"]
        assert not (folder / ".animetagnet-review.db").exists()      # --db elsewhere: nothing written into DIR
    finally:
        session.close()


def test_symlinks_out_of_the_folder_are_never_followed(folder, tmp_path):
    from animetagnet.serve.review.session import Filter, ReviewError, ReviewSession

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret, tags\n", encoding="utf-8")
    shutil.copy(folder / "img0.jpg", outside / "elsewhere.jpg")
    (folder / "img4.txt").unlink()
    (folder / "img4.txt").symlink_to(outside / "secret.txt")           # a caption pointing out of DIR
    (folder / "linked.jpg").symlink_to(outside / "elsewhere.jpg")      # an image pointing out of DIR
    session = ReviewSession(folder, None, db=tmp_path / "j.db")
    try:
        items = {it["name"]: it for it in session.list_items(Filter())["items"]}
        assert "symlink" in items["linked.jpg"]["problem"]
        with pytest.raises(ReviewError) as err:
            session.open_image(items["linked.jpg"]["id"])
        assert err.value.status == 404
        cap = items["img4.jpg"]
        assert cap["caption_state"] == "unreadable" and "symlink" in cap["caption_error"] and cap["tags"] == []
        with pytest.raises(ReviewError) as err:
            session.edit(cap["id"], cap["version"], "add", tag="x")
        assert err.value.code == "caption_unreadable"
        session.bulk(Filter(), "add", "everywhere")
        assert (outside / "secret.txt").read_text(encoding="utf-8") == "secret, tags\n"
    finally:
        session.close()
