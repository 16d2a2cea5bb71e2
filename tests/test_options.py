"""The one options layer: frozen definitions from which the CLI flags, the HTTP query, the Ray job and the docs derive."""

from __future__ import annotations

import argparse
import dataclasses
import pickle
from pathlib import Path

import pytest

from animetagnet.cli import build_parser
from animetagnet.errors import UsageError
from animetagnet.options import (
    ALL_GROUPS,
    DOCS_MARKER,
    CaptionOptions,
    FilterOptions,
    ModelOptions,
    OptionGroup,
    TagOptions,
    ThresholdOptions,
    markdown,
    option,
)

ROOT = Path(__file__).resolve().parents[1]


def _verb(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in parser._actions}


def test_groups_are_frozen_and_hashable():
    a = TagOptions(thresholds=ThresholdOptions(general=0.5, categories={"meta": 0.2}),
                   filters=FilterOptions(exclude=["smile", "solo"]), caption=CaptionOptions(always_first=["1girl"]))
    b = TagOptions(thresholds=ThresholdOptions(general=0.5, categories={"meta": 0.2}),
                   filters=FilterOptions(exclude=("smile", "solo")), caption=CaptionOptions(always_first=("1girl",)))
    assert a == b and hash(a) == hash(b)  # lists are kept as tuples: equal options are one cache key
    assert len({a, b, TagOptions()}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.thresholds.general = 0.1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(a)) == a  # what a Ray replica receives


def test_tag_flags_and_defaults_come_from_the_definitions():
    parser = _verb("tag")
    for group in TagOptions.GROUPS.values():
        for f in group.option_fields():
            assert f.name in _dests(parser), f.flag
    args = parser.parse_args(["x.jpg"])
    assert TagOptions.from_args(args) == TagOptions()  # the parser's defaults are the dataclasses'


def test_parsed_flags_build_the_same_options_as_python():
    args = _verb("tag").parse_args([
        "x.jpg", "-m", "models/m", "--device", "cpu", "--threads", "2", "--max-pixels", "1000", "--exact",
        "--general-threshold", "0.5", "--threshold-preset", "high_precision", "--mcut-character", "--top-k", "7",
        "--exclude", "smile, solo", "--exclude", "blush", "--replace", "1girl=one girl;solo=alone", "--drop-implied",
        "--spaces", "--separator", " | ", "--sort", "name", "--no-characters-first", "--always-first", "a,b"])
    assert TagOptions.from_args(args) == TagOptions(
        model=ModelOptions(model="models/m", device="cpu", threads=2, max_pixels=1000, exact=True),
        thresholds=ThresholdOptions(general=0.5, preset="high_precision", mcut_character=True, top_k=7),
        filters=FilterOptions(exclude=("smile", "solo", "blush"), replace=("1girl=one girl", "solo=alone"),
                              drop_implied=True),
        caption=CaptionOptions(spaces=True, separator=" | ", sort="name", characters_first=False,
                               always_first=("a", "b")))


@pytest.mark.parametrize("argv, message", [
    (["--general-threshold", "1.5"], "--general-threshold must be between 0 and 1, got 1.5"),
    (["--top-k", "0"], "--top-k must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1"),
])
def test_limits_are_checked_with_the_flag_name(argv, message):
    args = _verb("tag").parse_args(["x.jpg", *argv])
    with pytest.raises(UsageError, match=message):
        TagOptions.from_args(args)


def test_other_verbs_take_the_same_definitions():
    evaluate = _dests(_verb("evaluate"))
    assert {"general_threshold", "character_threshold", "threshold_preset", "max_pixels", "exact"} <= evaluate
    assert not {"mcut_general", "top_k", "spaces", "exclude"} & evaluate
    index = _dests(_verb("index"))
    assert {f.name for f in ThresholdOptions.option_fields()} <= index
    assert not {f.name for f in CaptionOptions.option_fields()} & index  # no faked formatting fields
    serve = _dests(_verb("serve"))
    assert {f.name for f in ModelOptions.option_fields()} - serve == {"workers"}
    # The help text, with the default in it, is the one written in options.py.
    helps = {a.dest: a.help for a in _verb("tag")._actions}
    assert helps["general_threshold"] == "threshold for general tags (default 0.35 or the model's)"
    assert helps["character_threshold"] == "threshold for character tags (default 0.85 or the model's)"
    assert helps["mcut_character"] == "MCut threshold for character tags (floor 0.15)"


def test_index_flags_come_from_the_index_group():
    from animetagnet.options import IndexOptions

    p = _verb("index")
    assert {f.name for f in IndexOptions.option_fields()} <= _dests(p)
    args = p.parse_args(["pics", "--db", "g.db", "--allow-symlinks", "--no-recursive", "--keep-missing", "--floor", "0.2"])
    assert IndexOptions.from_args(args) == IndexOptions(recursive=False, keep_missing=True, allow_symlinks=True, floor=0.2)
    assert IndexOptions.from_args(p.parse_args(["pics", "--db", "g.db"])) == IndexOptions()
    for floor, message in (("0", "--floor must be above 0"), ("1.5", "--floor must be at most 1, got 1.5")):
        with pytest.raises(UsageError, match=message):
            IndexOptions.from_args(p.parse_args(["pics", "--db", "g.db", "--floor", floor]))
    assert not IndexOptions.http_fields()  # paths on the server's disk: never an HTTP parameter


def test_a_new_field_reaches_the_cli_and_the_http_query():
    """What a colleague adding an option relies on: one field, and the flag and parameter exist."""
    pytest.importorskip("pydantic")
    from animetagnet.serve import params

    @dataclasses.dataclass(frozen=True)
    class Extra(OptionGroup):
        colour: str = option("red", "a colour", choices=("red", "blue"))
        names: tuple[str, ...] = option((), "names", split=",")

    p = argparse.ArgumentParser()
    Extra.add_arguments(p)
    assert Extra.from_args(p.parse_args(["--colour", "blue", "--names", "a,b"])) == Extra("blue", ("a", "b"))
    saved = dict(params.REQUEST_GROUPS)
    try:
        params.REQUEST_GROUPS["extra"] = Extra
        model = params.query_model("Q", "doc")
        q = model(colour="blue", names="x, y")
        assert Extra.from_query(q.model_dump()) == Extra("blue", ("x", "y"))
        assert model.model_fields["colour"].description == "a colour"
        with pytest.raises(Exception):
            model(colour="green")
    finally:
        params.REQUEST_GROUPS.clear()
        params.REQUEST_GROUPS.update(saved)


def test_http_query_is_derived_from_the_definitions():
    pytest.importorskip("fastapi")
    from animetagnet.serve.params import TagQuery

    fields = TagQuery.model_fields
    for group in (ThresholdOptions, FilterOptions, CaptionOptions):
        for f in group.option_fields():
            if f.spec.http:
                assert fields[f.name].description == f.spec.help, f.name
            else:
                assert f.name not in fields, f.name  # never a server path such as --implications
    assert set(fields) - {f.name for g in (ThresholdOptions, FilterOptions, CaptionOptions)
                          for f in g.http_fields()} == {"min_confidence"}
    q = TagQuery(general_threshold=0.4, exclude="smile,solo", replace="a=b;c=d", sort="name")
    assert q.tag_options() == TagOptions(thresholds=ThresholdOptions(general=0.4),
                                         filters=FilterOptions(exclude=("smile", "solo"), replace=("a=b", "c=d")),
                                         caption=CaptionOptions(sort="name"))


def test_service_caches_on_the_frozen_options(tiny_model):
    pytest.importorskip("fastapi")
    from animetagnet import Tagger
    from animetagnet.serve.service import TagService

    service = TagService(Tagger(tiny_model, device="cpu"))
    assert service.selector(ThresholdOptions(general=0.5)) is service.selector(ThresholdOptions(general=0.5))
    assert service.selector(ThresholdOptions(general=0.5)) is not service.selector(ThresholdOptions(general=0.6))


def test_docs_reference_is_current():
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    assert DOCS_MARKER in text, "docs/options.md lost its generated part"
    assert text.split(DOCS_MARKER, 1)[1].strip() == markdown().strip(), \
        "docs/options.md is stale: run `python -m animetagnet.options docs/options.md`"
    for group in ALL_GROUPS:
        assert group.__name__ in text
