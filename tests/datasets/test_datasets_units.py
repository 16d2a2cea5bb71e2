"""Unit tests: tag normalisation, split function, Danbooru record parsing, tag tables, curation."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

from animetagnet.datasets.curation import CurationRules, parse_category_values, select_vocabulary
from animetagnet.datasets.danbooru import RecordError, iter_posts, parse_post, tag_id_of
from animetagnet.datasets.folders import class_tag, group_of_file, prefix_rule, read_caption
from animetagnet.datasets.records import SkipLog, normalize_tag
from animetagnet.datasets.splits import bucket_of, parse_ratios, split_of
from animetagnet.datasets.tagtable import TagTable
from animetagnet.errors import UsageError
from animetagnet.vocab import Category, wd_layout_problems


def test_normalize_tag_spellings():
    assert normalize_tag(" Long Hair ") == "long_hair"
    assert normalize_tag("irys \\(hololive\\)") == "irys_(hololive)"
    assert normalize_tag("ninomae_ina'nis") == "ninomae_ina'nis"
    assert normalize_tag("looking  at\tviewer") == "looking_at_viewer"


def test_split_is_the_documented_pure_function():
    for key in ["263162", "003ac0318183723d1fb1477d06f9574c", "päth/ü"]:
        expected_bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 10000
        assert bucket_of(key) == expected_bucket
        expected = "train" if expected_bucket < 8000 else "val" if expected_bucket < 9000 else "test"
        assert split_of(key) == expected
        assert split_of(key) == split_of(key)


def test_split_ratios_are_respected():
    counts = Counter(split_of(str(i)) for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.8) < 0.015
    assert abs(counts["val"] / 20000 - 0.1) < 0.01
    counts = Counter(split_of(str(i), (50, 0, 50)) for i in range(2000))
    assert counts["val"] == 0 and counts["train"] > 800 and counts["test"] > 800


def test_parse_ratios():
    assert parse_ratios("80/10/10") == (80.0, 10.0, 10.0)
    assert parse_ratios("0.7,0.2,0.1") == pytest.approx((70.0, 20.0, 10.0))
    for bad in ["80/10", "80/30/10", "a/b/c", "0/50/50"]:
        with pytest.raises(UsageError):
            parse_ratios(bad)


def test_parse_real_danbooru2017_record(data_dir):
    line = (data_dir / "danbooru-metadata" / "danbooru2017_format_record_263162.jsonl").read_text().splitlines()[0]
    post = parse_post(json.loads(line))
    assert post.id == "263162" and post.md5 == "9a0f9e0f08907d12b7d08e46047ae4d8"
    assert post.parent_id is None and post.group == "263162"
    tags = dict(post.tags)
    assert tags["1girl"] == 0 and tags["kakinouchi_narumi"] == 1
    assert tags["vampire_princess_miyu"] == 3 and tags["miyu_(vampire_princess_miyu)"] == 4
    assert post.rating == "general"  # 2017 "s" = safe, WD's "general"
    assert tag_id_of(dict(zip((n for n, _ in post.tags), post.tag_ids))["1girl"]) == 470575


def test_parse_newer_record_shape():
    post = parse_post({
        "id": 7000001, "md5": "A" * 32, "parent_id": 7000000, "rating": "s",
        "tag_string_general": "1girl solo", "tag_string_character": "hatsune_miku",
        "tag_string_copyright": "vocaloid", "tag_string_artist": "someone", "tag_string_meta": "highres",
    })
    assert post.id == "7000001" and post.group == "7000000" and post.md5 == "a" * 32
    assert dict(post.tags) == {"1girl": 0, "solo": 0, "hatsune_miku": 4, "vocaloid": 3, "someone": 1, "highres": 5}
    assert post.rating == "sensitive"  # newer exports: g/s/q/e
    assert parse_post({"id": "1", "tag_string_general": "a", "rating": "g"}).rating == "general"
    odd = parse_post({"id": "12", "md5": "z" * 32, "parent_id": "inf", "tags": [{"name": "a"}, {"id": 3}, 7]})
    assert odd.md5 is None and odd.parent_id is None and odd.tags == (("a", None),)
    with pytest.raises(RecordError):
        parse_post({"id": "1e400", "tags": []})
    with pytest.raises(RecordError):
        parse_post({"tags": []})
    with pytest.raises(RecordError):
        parse_post({"id": "5"})


def test_iter_posts_counts_bad_lines(tmp_path):
    f = tmp_path / "meta.jsonl"
    f.write_text('{"id":"1","tags":[]}\nnot json\n\n[1,2]\n{"id":"0","tags":[]}\n{"id":"2","tag_string":"a b"}\n')
    log = SkipLog()
    posts = list(iter_posts([f, tmp_path / "absent.jsonl"], log))
    assert [p.id for p in posts] == ["1", "2"]
    assert log.counts["malformed JSON line"] == 1
    assert log.counts["line is not a JSON object"] == 1
    assert log.counts["record without a valid id"] == 1
    assert log.counts["unreadable metadata file"] == 1
    assert log.examples["malformed JSON line"] == [f"{f}:2"]


def test_real_tag_table_aliases_and_categories(data_dir):
    table = TagTable().load(data_dir / "tags" / "danbooru_tags.csv")
    assert table.canonical("longhair") == "long_hair"
    assert table.canonical("toeless_socks") == "toeless_legwear"
    assert table.canonical("long_hair") == "long_hair"
    assert table.category("highres") == 5 and table.category("1girl") == 0
    wd = TagTable().load(data_dir / "tags" / "wd_v3_selected_tags.csv")
    assert wd.category("general") is None and wd.category("1girl") == 0


def test_alias_file_two_columns(tmp_path):
    f = tmp_path / "aliases.csv"
    f.write_text("antecedent_name,consequent_name\nblack_legwear,black_thighhighs\nold name,new_name\n")
    table = TagTable().load(f)
    assert table.canonical("black_legwear") == "black_thighhighs"
    assert table.canonical("old_name") == "new_name"


def _counts():
    counts = Counter({"1girl": 100, "long_hair": 60, "smile": 40, "highres": 90, "rare": 2,
                      "hatsune_miku": 30, "vocaloid": 30, "artist_x": 12})
    cats = {"1girl": 0, "long_hair": 0, "smile": 0, "highres": 5, "rare": 0,
            "hatsune_miku": 4, "vocaloid": 3, "artist_x": 1}
    return counts, cats


def test_frequency_selection_per_category():
    counts, cats = _counts()
    vocab, report = select_vocabulary(counts, cats, Counter({"general": 50, "explicit": 5}),
                                      CurationRules(min_count={"*": 10}), {"1girl": 470575})
    # The four WD rating rows always come first; unlabelled (count 0) without --ratings.
    assert vocab.names == ["general", "sensitive", "questionable", "explicit", "1girl", "long_hair", "smile", "hatsune_miku"]
    assert [t.count for t in vocab[:4]] == [0, 0, 0, 0] and report["ratings_labelled"] == 0
    assert vocab[4].tag_id == 470575 and vocab[4].count == 100
    assert report["kept"] == {"general": 3, "character": 1, "rating": 4}
    assert wd_layout_problems(vocab) == [] and "warnings" not in report
    rules = CurationRules(categories=("general", "character", "copyright"), min_count={"*": 10, "character": 50},
                          top={"general": 2}, ratings=True)
    vocab, report = select_vocabulary(counts, cats, Counter({"general": 50, "explicit": 5}), rules)
    assert vocab.names == ["general", "sensitive", "questionable", "explicit", "1girl", "long_hair", "vocaloid"]
    assert vocab[0].category is Category.RATING and vocab[0].tag_id == 9999999
    assert [t.count for t in vocab[:4]] == [50, 0, 0, 5] and report["ratings_labelled"] == 2
    # Copyright after the characters is allowed by the layout but warned about: positional readers misread it.
    assert wd_layout_problems(vocab) == []
    assert "copyright" in report["warnings"][0] and "IndexError" in report["warnings"][0]


def test_original_rules_keep_only_letters_and_digits():
    counts, cats = _counts()
    vocab, report = select_vocabulary(counts, cats, Counter(), CurationRules.original())
    assert "long_hair" not in vocab and "hatsune_miku" not in vocab
    assert wd_layout_problems(vocab) == []  # ratings, general, copyright, artist, meta
    assert {"1girl", "smile", "highres", "vocaloid", "rare"} <= set(vocab.names)
    assert report["original"] == {"one_word_tags": 5, "multi_word_tags": 3}
    rules = CurationRules.original()
    rules.top = {"*": 2}
    vocab, _ = select_vocabulary(counts, cats, Counter(), rules)
    assert vocab.names[4:] == ["1girl", "highres"]


def test_parse_category_values():
    assert parse_category_values(["10", "character=5", "4=3"], "--min-count") == {"*": 10, "character": 3}
    with pytest.raises(UsageError):
        parse_category_values(["nosuch=3"], "--top")


def test_folder_names_and_groups(tmp_path):
    assert prefix_rule(["000_hatsune_miku", "001_kinomoto_sakura"]) is True
    assert prefix_rule(["000_hatsune_miku", "gawr_gura"]) is False
    assert class_tag("000_hatsune_miku", True) == "hatsune_miku"
    assert class_tag("ninomae_ina'nis", False) == "ninomae_ina'nis"
    assert group_of_file("gawr_gura/003ac0318183723d1fb1477d06f9574c-3") == "003ac0318183723d1fb1477d06f9574c"
    assert group_of_file("c/0e9c515bf4890cf7cf7100bb86f13929_promise-2") == "0e9c515bf4890cf7cf7100bb86f13929"
    assert group_of_file("x/face_12_3") == "x/face_12_3"
    cap = tmp_path / "a.txt"
    cap.write_text("1girl, long hair, irys \\(hololive\\),\nsmile, long_hair\n")
    assert read_caption(str(cap)) == ["1girl", "long_hair", "irys_(hololive)", "smile"]


def test_iter_posts_survives_fields_of_any_type(tmp_path):
    import random

    rng = random.Random(0)
    values = [None, True, 0, -1, 1.5, "", "x", "12", [], {}, [1], {"a": 1}, [{"name": ["x"]}],
              [{"name": "ok", "category": ["0"]}], [{"name": "ok", "category": {"x": 1}, "id": []}]]
    keys = ["id", "tags", "md5", "rating", "parent_id", "tag_string", "tag_string_general", "file_ext"]
    lines = []
    for _ in range(500):
        obj = {k: rng.choice(values) for k in keys if rng.random() < 0.7}
        lines.append(json.dumps(obj))
    lines.append('{"id": "77", "tags": [{"name": "fine", "category": "0"}]}')
    f = tmp_path / "fuzz.jsonl"
    f.write_text("\n".join(lines) + "\n")
    log = SkipLog()
    posts = list(iter_posts([f], log))
    assert posts[-1].id == "77" and posts[-1].tags == (("fine", 0),)
    assert len(posts) + log.total() == len(lines)
