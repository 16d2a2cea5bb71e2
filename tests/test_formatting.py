"""Caption formatting and tag filtering as users ask for it."""

from __future__ import annotations

import pytest

from animetagnet.errors import UsageError
from animetagnet.formatting import (
    CaptionStyle, TagFilter, load_implications, merge_caption, normalize_tag, parse_replacements,
)
from animetagnet.results import TagResult


def result():
    return TagResult(
        path="x.jpg", rating="general", ratings={"general": 0.9},
        tags={"general": {"long_hair": 0.95, "very_long_hair": 0.9, "^_^": 0.8, "1girl": 0.99, "smile": 0.5},
              "character": {"irys_(hololive)": 0.97}},
    )


def test_default_caption_characters_first_by_confidence():
    assert CaptionStyle().caption(result()) == "irys_(hololive), 1girl, long_hair, very_long_hair, ^_^, smile"


def test_spaces_keep_kaomoji_and_escape():
    text = CaptionStyle(spaces=True, escape_parens=True).caption(result())
    assert text == r"irys \(hololive\), 1girl, long hair, very long hair, ^_^, smile"


def test_confidence_sort_by_name_separator_rating_always_first():
    style = CaptionStyle(with_confidence=True, sort="name", separator=" | ", include_rating=True,
                         always_first=["smile"], characters_first=False)
    assert style.caption(result()) == (
        "(general:0.90) | (smile:0.50) | (1girl:0.99) | (^_^:0.80) | (irys_(hololive):0.97) | (long_hair:0.95) | (very_long_hair:0.90)"
    )


def test_filter_exclude_replace_and_drop_implied():
    f = TagFilter(exclude={"smile"}, replacements=parse_replacements(["1girl=one_girl"]), implications=load_implications())
    r = f.apply(result())
    assert r.general == {"very_long_hair": 0.9, "^_^": 0.8, "one_girl": 0.99}
    assert "long_hair" not in r.general  # implied by very_long_hair
    assert r.character == {"irys_(hololive)": 0.97}


def test_user_implication_table_is_transitive(tmp_path):
    p = tmp_path / "imp.csv"
    p.write_text("# comment\nabsurdly_long_hair,very_long_hair\nvery long hair,long_hair\n")
    imp = load_implications(p)
    assert imp["absurdly_long_hair"] == {"very_long_hair", "long_hair"}
    (tmp_path / "bad.csv").write_text("only_one_column\n")
    with pytest.raises(UsageError, match="antecedent,consequent"):
        load_implications(tmp_path / "bad.csv")


def test_normalize_and_merge_without_duplicates():
    assert normalize_tag(r"(Long Hair:1.2)") == "long_hair"
    assert normalize_tag(r"irys \(hololive\)") == "irys_(hololive)"
    merged = merge_caption("my_oc, long hair", ["long_hair", "smile"], "append")
    assert merged == "my_oc, long hair, smile"
    assert merge_caption("my_oc", ["smile", "my oc"], "prepend") == "smile, my_oc"


def test_bad_options():
    with pytest.raises(UsageError):
        parse_replacements(["nope"])
    with pytest.raises(UsageError):
        CaptionStyle(sort="random")
