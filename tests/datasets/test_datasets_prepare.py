"""End-to-end `prepare` on real data: the faces folder, a Kaggle-layout tree, caption folders."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from animetagnet.datasets.curation import CurationRules
from animetagnet.datasets.prepare import PrepareOptions, detect_format, prepare_dataset
from animetagnet.errors import UsageError
from animetagnet.vocab import Vocabulary

from ds_helpers import SRC, run_cli, run_main

pytestmark = pytest.mark.realdata
SPLIT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl")


def read_split(ds: Path, name: str) -> list[dict]:
    return [json.loads(l) for l in (ds / name).read_text(encoding="utf-8").splitlines()]


def all_records(ds: Path) -> dict[str, list[dict]]:
    return {name.split(".")[0]: read_split(ds, name) for name in SPLIT_FILES}


def file_bytes(ds: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(ds.iterdir())}


@pytest.fixture(scope="module")
def faces_datasets(data_dir, tmp_path_factory):
    """The real faces folder prepared twice, into two directories."""
    outs = []
    for k in range(2):
        out = tmp_path_factory.mktemp(f"faces{k}") / "ds"
        info = prepare_dataset(PrepareOptions(source=str(data_dir / "faces"), out=str(out)))
        outs.append((out, info))
    return outs


def test_faces_counts_vocabulary_and_files(faces_datasets, data_dir):
    out, info = faces_datasets[0]
    assert info["source"]["format"] == "folders"
    n_files = sum(1 for _ in (data_dir / "faces").rglob("*.jpg"))
    collapsed = info["counts"]["skipped"].get("byte-identical image collapsed into its first copy (tags merged)", {}).get("count", 0)
    assert info["counts"]["records_read"] == n_files
    assert info["counts"]["records_kept"] == n_files - collapsed
    vocab = Vocabulary.read_csv(out / "selected_tags.csv")
    folders = sorted(p.name for p in (data_dir / "faces").iterdir() if p.is_dir())
    assert vocab.names[:4] == ["general", "sensitive", "questionable", "explicit"]  # WD layout, unlabelled here
    assert sorted(vocab.names[4:]) == folders  # includes ninomae_ina'nis and irys_(hololive)
    assert {t.category.label for t in vocab[4:]} == {"character"} and all(t.count == 0 for t in vocab[:4])
    recs = all_records(out)
    assert sum(len(v) for v in recs.values()) == info["counts"]["records_kept"]
    train_counts = defaultdict(int)
    for r in recs["train"]:
        for t in r["tags"]:
            train_counts[t] += 1
    assert {t.name: t.count for t in vocab[4:]} == dict(train_counts)
    ids = [r["id"] for v in recs.values() for r in v]
    assert len(ids) == len(set(ids))
    for v in recs.values():
        for r in v:
            assert Path(r["image"]).is_absolute() and Path(r["image"]).is_file()
            assert r["tags"] and set(r["tags"]) <= set(vocab.names)
    # Split sizes near 80/10/10.
    total = info["counts"]["records_kept"]
    assert 0.75 < len(recs["train"]) / total < 0.85
    assert (out / "label_frequency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "coverage" in (out / "report.md").read_text()


def test_faces_crops_of_one_post_share_a_split(faces_datasets):
    out, _ = faces_datasets[0]
    split_of_group: dict[str, set] = defaultdict(set)
    multi = 0
    for split, recs in all_records(out).items():
        for r in recs:
            assert r["group"] == r["id"].split("/")[-1][:32]
            split_of_group[r["group"]].add(split)
    assert all(len(s) == 1 for s in split_of_group.values())
    # and the grouping matters: many posts have several crops
    per_group = defaultdict(int)
    for recs in all_records(out).values():
        for r in recs:
            per_group[r["group"]] += 1
    assert sum(1 for n in per_group.values() if n > 1) > 100


def test_faces_duplicates_collapsed_with_merged_tags(faces_datasets):
    out, info = faces_datasets[0]
    entry = info["counts"]["skipped"]["byte-identical image collapsed into its first copy (tags merged)"]
    assert entry["count"] >= 1
    multi = [r for v in all_records(out).values() for r in v if len(r["tags"]) > 1]
    assert multi  # byte-identical crops filed under two characters now carry both tags
    contents = defaultdict(list)
    for v in all_records(out).values():
        for r in v:
            contents[Path(r["image"]).read_bytes()].append(r["id"])
    assert all(len(ids) == 1 for ids in contents.values())


def test_faces_rerun_is_byte_identical(faces_datasets):
    (a, _), (b, _) = faces_datasets
    fa, fb = file_bytes(a), file_bytes(b)
    assert sorted(fa) == ["dataset.json", "label_frequency.png", "report.md", "selected_tags.csv",
                          "stats.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    assert fa == fb


def test_kaggle_layout_end_to_end(kaggle_tree, tmp_path):
    out = tmp_path / "ds"
    res = run_cli("prepare", str(kaggle_tree["root"]), "--out", str(out), "--min-count", "1", "--ratings")
    assert res.returncode == 1, res.stderr  # some inputs were broken: reported, not fatal
    info = json.loads((out / "dataset.json").read_text())
    assert info["source"]["format"] == "kaggle" and info["source"]["format_detected"]
    assert len(info["source"]["layout"]["metadata_files"]) == 2
    skipped = info["counts"]["skipped"]
    assert skipped["malformed JSON line"]["count"] == 1
    assert skipped["duplicate post id (later copy skipped)"]["count"] == 1
    assert skipped["post without an image file"]["count"] == len(kaggle_tree["real_ids"])
    assert set(skipped["post without an image file"]["examples"]) == set(kaggle_tree["real_ids"])
    assert skipped["image file without a post in the metadata"]["count"] == 1
    assert skipped["image file without a post in the metadata"]["examples"][0].endswith(kaggle_tree["unposted_image"])
    assert [k for k in skipped if k.startswith("unusable image")]
    assert "inputs failed" in res.stderr
    recs = {r["id"]: (split, r) for split, rs in all_records(out).items() for r in rs}
    assert set(recs) == set(kaggle_tree["posts"])  # every good post, incl. the md5-named file
    assert kaggle_tree["md5_named"] in recs and kaggle_tree["broken"] not in recs
    child, parent = recs[kaggle_tree["child"]], recs[kaggle_tree["parent"]]
    assert child[1]["group"] == parent[1]["group"] == kaggle_tree["parent"] and child[0] == parent[0]
    vocab = Vocabulary.read_csv(out / "selected_tags.csv")
    assert "highres" not in vocab  # meta excluded by default
    assert vocab.names[0] == "general" and vocab[0].category == 9
    for pid, (split, r) in recs.items():
        assert r["tags"][0] == "general"  # rating label first
        expected = set(kaggle_tree["posts"][pid]) & set(vocab.names)
        assert set(r["tags"][1:]) == expected
    # rerun into a second directory: byte-identical
    out2 = tmp_path / "ds2"
    assert run_main("prepare", str(kaggle_tree["root"]), "--out", str(out2), "--min-count", "1", "--ratings", "-q").returncode == 1
    assert file_bytes(out) == file_bytes(out2)


def test_kaggle_faces_part_strips_prefixes(kaggle_tree, tmp_path):
    out = tmp_path / "faces"
    info = prepare_dataset(PrepareOptions(source=str(kaggle_tree["root"]), out=str(out), kaggle_part="faces",
                                          rules=CurationRules(min_count={"*": 1})))
    assert sorted(Vocabulary.read_csv(out / "selected_tags.csv").names[4:]) == ["gawr_gura", "irys_(hololive)"]
    assert info["counts"]["records_kept"] == 12
    assert info["source"]["layout"]["faces_dir"].endswith("moeimouto-faces/moeimouto-faces")


def test_metadata_only_and_original_rules(kaggle_tree, tmp_path):
    meta_dir = kaggle_tree["root"] / "tagged-anime-illustrations" / "danbooru-metadata"
    out = tmp_path / "meta"
    res = run_main("prepare", str(meta_dir), "--out", str(out), "--metadata-only", "--rules", "original", "--no-plot")
    assert res.returncode == 1, res.stderr  # the malformed line
    info = json.loads((out / "dataset.json").read_text())
    assert info["source"]["format"] == "danbooru" and info["image_paths"].startswith("none")
    assert not any((out / f).exists() for f in SPLIT_FILES)
    vocab = Vocabulary.read_csv(out / "selected_tags.csv")
    assert all(n.isalnum() for n in vocab.names[4:]) and "1girl" in vocab
    assert info["selection"]["original"]["multi_word_tags"] > 0
    # metadata without images and without --metadata-only is a usage error
    res = run_main("prepare", str(meta_dir), "--out", str(tmp_path / "x"))
    assert res.returncode == 2 and "--images" in res.stderr


def test_captions_folder_with_tag_table(data_dir, tmp_path):
    src = tmp_path / "captioned"
    sub = src / "10_set"
    sub.mkdir(parents=True)
    tagged = json.loads((data_dir / "danbooru-512px" / "tagged" / "tags.json").read_text())
    for fname, tags in sorted(tagged.items()):
        shutil.copy(data_dir / "danbooru-512px" / "tagged" / fname, sub / fname)
        # prompt style: spaces, escaped parentheses, an old alias and a meta tag
        words = [t.replace("_", " ").replace("(", "\\(").replace(")", "\\)") for t in tags] + ["highres", "longhair"]
        (sub / (Path(fname).stem + ".txt")).write_text(", ".join(words))
    shutil.copy(sorted((data_dir / "danbooru-512px" / "untagged").glob("*.jpg"))[0], sub / "nocaption.jpg")
    (sub / "orphan.txt").write_text("1girl")
    assert detect_format(src) == "captions"
    out = tmp_path / "ds"
    info = prepare_dataset(PrepareOptions(
        source=str(src), out=str(out), rules=CurationRules(min_count={"*": 1}),
        tag_tables=[str(data_dir / "tags" / "danbooru_tags.csv")]))
    skipped = info["counts"]["skipped"]
    assert skipped["image without a caption file"]["count"] == 1
    assert skipped["caption file without an image"]["count"] == 1
    vocab = Vocabulary.read_csv(out / "selected_tags.csv")
    assert "highres" not in vocab and "longhair" not in vocab  # meta by the table; alias mapped
    assert "long_hair" in vocab
    recs = [r for rs in all_records(out).values() for r in rs]
    assert len(recs) == len(tagged)
    for r in recs:
        assert "long_hair" in r["tags"]
        src_tags = set(tagged[Path(r["image"]).name])
        assert set(r["tags"]) - {"long_hair"} <= src_tags
    cov = info["stats"]["splits"]["all"]["coverage"]
    assert 0 < cov["mean_all"] < 1  # highres is a tag of every image that the vocabulary drops


def test_output_directory_is_never_clobbered(data_dir, tmp_path):
    src = data_dir / "faces"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        prepare_dataset(PrepareOptions(source=str(src), out=str(busy)))
    assert (busy / "notes.txt").read_text() == "mine"
    small = tmp_path / "small"
    for char in ["gawr_gura", "mori_calliope"]:
        (small / char).mkdir(parents=True)
        for f in sorted((src / char).glob("*.jpg"))[:5]:
            shutil.copy(f, small / char / f.name)
    out = tmp_path / "ds"
    res = run_cli("prepare", str(small), "--out", str(out), "--min-count", "1", "--no-plot")
    assert res.returncode == 0, res.stderr
    assert not (out / "label_frequency.png").exists()
    assert "disabled" in json.loads((out / "stats.json").read_text())["plot_skipped"]
    res = run_main("prepare", str(small), "--out", str(out), "--min-count", "1")
    assert res.returncode == 2 and "--overwrite" in res.stderr
    res = run_main("prepare", str(small), "--out", str(out), "--min-count", "1", "--overwrite", "--class-category", "general", "--no-plot")
    assert res.returncode == 0, res.stderr
    assert {t.category.label for t in Vocabulary.read_csv(out / "selected_tags.csv")} == {"general", "rating"}
    assert run_main("dataset-stats", str(out)).stdout.startswith("# Dataset report")
    # an interrupted run leaves our files without dataset.json: refused unless --overwrite
    (out / "dataset.json").unlink()
    assert run_main("prepare", str(small), "--out", str(out), "--min-count", "1", "-q").returncode == 2
    assert run_main("prepare", str(small), "--out", str(out), "--min-count", "1", "-q", "--overwrite").returncode == 0
    assert (out / "dataset.json").exists()


def test_unreadable_and_truncated_images_are_skipped(data_dir, tmp_path):
    src = tmp_path / "cls"
    (src / "gawr_gura").mkdir(parents=True)
    good = sorted((data_dir / "faces" / "gawr_gura").glob("*.jpg"))[:3]
    for f in good:
        shutil.copy(f, src / "gawr_gura" / f.name)
    (src / "gawr_gura" / "empty.jpg").write_bytes(b"")
    (src / "gawr_gura" / "text.png").write_text("not an image")
    (src / "gawr_gura" / "cut.jpg").write_bytes(good[0].read_bytes()[: good[0].stat().st_size // 2])
    (src / "gawr_gura" / "readme.md").write_text("x")
    info = prepare_dataset(PrepareOptions(source=str(src), out=str(tmp_path / "h"), rules=CurationRules(min_count={"*": 1})))
    sk = info["counts"]["skipped"]
    assert sk["unusable image: empty file"]["count"] == 1
    assert sk["unusable image: not an image (unrecognised file format)"]["count"] == 1
    assert sk["not an image file (ignored)"]["count"] == 1
    assert info["counts"]["records_kept"] == 4  # the truncated JPEG passes a header check
    info = prepare_dataset(PrepareOptions(source=str(src), out=str(tmp_path / "f"), verify="full",
                                          rules=CurationRules(min_count={"*": 1})))
    assert info["counts"]["records_kept"] == 3
    # the thread count never changes the output
    for workers in (1, 3):
        prepare_dataset(PrepareOptions(source=str(src), out=str(tmp_path / f"w{workers}"), verify="full",
                                       workers=workers, rules=CurationRules(min_count={"*": 1})))
        assert file_bytes(tmp_path / f"w{workers}") == file_bytes(tmp_path / "f")
    assert any(k.startswith("unusable image: cannot decode") for k in info["counts"]["skipped"])


def test_report_without_matplotlib(data_dir, tmp_path, monkeypatch):
    src = tmp_path / "cls"
    (src / "gawr_gura").mkdir(parents=True)
    for f in sorted((data_dir / "faces" / "gawr_gura").glob("*.jpg"))[:3]:
        shutil.copy(f, src / "gawr_gura" / f.name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    info = prepare_dataset(PrepareOptions(source=str(src), out=str(tmp_path / "ds"), rules=CurationRules(min_count={"*": 1})))
    assert "matplotlib is not installed" in info["stats"]["plot_skipped"]
    assert not (tmp_path / "ds" / "label_frequency.png").exists()
    assert "matplotlib is not installed" in (tmp_path / "ds" / "report.md").read_text()


def test_alias_merge_old_and_new_names(tmp_path):
    meta = tmp_path / "posts.jsonl"
    lines = []
    for i in range(1, 41):
        name = "black_legwear" if i % 2 else "black_thighhighs"
        lines.append(json.dumps({"id": str(i), "tags": [{"id": "1", "name": name, "category": "0"}], "rating": "s"}))
    meta.write_text("\n".join(lines) + "\n")
    aliases = tmp_path / "aliases.csv"
    aliases.write_text("black_legwear,black_thighhighs\n")
    out = tmp_path / "ds"
    info = prepare_dataset(PrepareOptions(source=str(meta), out=str(out), metadata_only=True, tag_tables=[str(aliases)],
                                          rules=CurationRules(min_count={"*": 1})))
    vocab = Vocabulary.read_csv(out / "selected_tags.csv")
    assert vocab.names[4:] == ["black_thighhighs"]
    assert vocab[4].count == info["stats"]["splits"]["train"]["images"]


def test_core_import_never_pulls_torch():
    code = ("import sys, argparse; sys.modules['torch'] = None; import animetagnet.datasets.cli as c; "
            "c.register(argparse.ArgumentParser().add_subparsers()); "
            "import animetagnet.datasets.prepare, animetagnet.datasets.stats, animetagnet.datasets.kaggle; "
            "assert 'matplotlib' not in sys.modules; print('ok')")
    import subprocess, os
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_danbooru_newer_records_gzip_with_images_dir(data_dir, tmp_path):
    import gzip

    imgs = tmp_path / "imgs" / "nested"
    imgs.mkdir(parents=True)
    tagged = json.loads((data_dir / "danbooru-512px" / "tagged" / "tags.json").read_text())
    lines = []
    for i, (fname, tags) in enumerate(sorted(tagged.items())):
        pid = int(Path(fname).stem)
        data = (data_dir / "danbooru-512px" / "tagged" / fname).read_bytes()
        md5 = __import__("hashlib").md5(data).hexdigest()
        # half the files are named by md5, half by id
        (imgs / (f"{md5}.jpg" if i % 2 else f"{pid}.jpg")).write_bytes(data)
        lines.append(json.dumps({"id": pid, "md5": md5, "rating": "gsqe"[i % 4], "parent_id": None,
                                 "tag_string_general": " ".join(tags), "tag_string_meta": "highres absurdres"}))
    meta = tmp_path / "posts.jsonl.gz"
    with gzip.open(meta, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    out = tmp_path / "ds"
    res = run_main("prepare", str(meta), "--images", str(tmp_path / "imgs"), "--out", str(out),
                   "--min-count", "1", "--ratings", "--split", "50/25/25", "--no-plot")
    assert res.returncode == 0, res.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["source"]["format"] == "danbooru" and info["counts"]["records_kept"] == len(tagged)
    assert info["split"]["ratios"] == {"train": 50.0, "val": 25.0, "test": 25.0}
    vocab = Vocabulary.read_csv(out / "selected_tags.csv")
    assert "highres" not in vocab and "absurdres" not in vocab
    ratings = [t.name for t in vocab if t.category == 9]
    assert ratings and set(ratings) <= {"general", "sensitive", "questionable", "explicit"}
    res = run_main("prepare", str(tmp_path), "--out", str(tmp_path / "inside"))
    assert res.returncode == 2 and "inside the source" in res.stderr


def test_original_rules_cover_less_than_frequency_rules(kaggle_tree, tmp_path):
    """The coverage report exposes what the original project's tag filter throws away."""
    cov = {}
    for rules in ("frequency", "original"):
        out = tmp_path / rules
        run_main("prepare", str(kaggle_tree["root"]), "--out", str(out), "--rules", rules, "--min-count", "1", "-q", "--no-plot")
        cov[rules] = json.loads((out / "stats.json").read_text())["splits"]["all"]["coverage"]["mean_all"]
    assert cov["original"] < cov["frequency"]


def test_load_api_reads_back_what_prepare_wrote(faces_datasets, tmp_path):
    from animetagnet.datasets import read_info, read_split, read_vocabulary

    out, info = faces_datasets[0]
    assert read_info(out)["counts"] == info["counts"]
    vocab = read_vocabulary(out)
    train = read_split(out, "train")
    assert len(train) == info["counts"]["images"]["train"]
    assert all(Path(e.image).is_absolute() and set(e.tags) <= set(vocab.names) for e in train)
    # a hand-written dataset with a relative image path
    hand = tmp_path / "hand"
    hand.mkdir()
    shutil.copy(train[0].image, hand / "a.jpg")
    (hand / "val.jsonl").write_text(json.dumps({"id": "a", "image": "a.jpg", "tags": ["gawr_gura"]}) + "\n")
    (ex,) = read_split(hand, "val")
    assert ex.image == str(hand / "a.jpg") and ex.group == "a"
    (hand / "test.jsonl").write_text("{broken\n")
    with pytest.raises(UsageError, match="test.jsonl:1"):
        read_split(hand, "test")
