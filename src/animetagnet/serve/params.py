"""The HTTP query model of /v1/tag and /v1/caption, built from the option groups in options.py.

Each option with `http=True` becomes a query parameter with the same public name as its
command-line flag (`general_threshold` for `--general-threshold`), its help as the OpenAPI
description and its limits as pydantic constraints (so a bad value is a 422 before any work).
List options (`exclude`, `replace`, `always_first`) are one string each, split as on the
command line. Implication tables are never offered: the service does not read paths a client names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..options import CaptionOptions, FilterOptions, OptionField, OptionGroup, TagOptions, ThresholdOptions

#: The groups a request may set, by their TagOptions attribute.
REQUEST_GROUPS: dict[str, type[OptionGroup]] = {"thresholds": ThresholdOptions, "filters": FilterOptions,
                                                "caption": CaptionOptions}


def _field(f: OptionField) -> tuple[Any, Any]:
    """(annotation, pydantic Field) of one option."""
    limits = {k: v for k, v in (("ge", f.spec.ge), ("le", f.spec.le), ("gt", f.spec.gt)) if v is not None}
    limits.update(dict(f.spec.http_limits))
    if f.is_list:
        return str | None, Field(None, description=f.spec.help, **limits)
    if f.spec.choices is not None:
        annotation: Any = Literal[f.spec.choices]  # type: ignore[valid-type]
    else:
        annotation = f.type
    if f.default is None:
        annotation = annotation | None
    return annotation, Field(f.default, description=f.spec.help, **limits)


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def tag_options(self) -> TagOptions:
        """The frozen options this query asks for (hashable: the service caches on them)."""
        query = self.model_dump()
        return TagOptions(**{name: group.from_query(query) for name, group in REQUEST_GROUPS.items()})


def query_model(name: str, doc: str, **extra: tuple[Any, Any]) -> type[_Query]:
    """A pydantic model of every request option, plus `extra` endpoint-specific fields."""
    fields: dict[str, Any] = {}
    for group in REQUEST_GROUPS.values():
        for f in group.http_fields():
            fields[f.name] = _field(f)
    fields.update(extra)
    model = create_model(name, __base__=_Query, **fields)
    model.__doc__ = doc
    return model


TagQuery = query_model(
    "TagQuery", "Query parameters of /v1/tag and /v1/caption: the same names and meaning as `animetagnet tag` "
                "options (/v1/caption uses the filter and caption ones).",
    min_confidence=(float | None, Field(None, ge=0, le=1, description="also return `scores`: every tag at or above "
                                                                      "this confidence, for client-side filtering")),
)
