"""Typed tagging results: what one image got (rating, tags by category with confidences, or an error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

#: Category labels in caption order after character tags (see formatting).
CATEGORY_ORDER = ("character", "copyright", "artist", "general", "meta")


@dataclass
class TagResult:
    """The tags of one image. `tags` maps a category label to {tag: confidence}, best first."""

    path: str | None = None
    rating: str | None = None
    ratings: dict[str, float] = field(default_factory=dict)
    tags: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def general(self) -> dict[str, float]:
        return self.tags.get("general", {})

    @property
    def character(self) -> dict[str, float]:
        return self.tags.get("character", {})

    def iter_tags(self) -> Iterator[tuple[str, str, float]]:
        """(name, category label, confidence) for every selected tag except ratings."""
        for cat in CATEGORY_ORDER:
            for name, conf in self.tags.get(cat, {}).items():
                yield name, cat, conf
        for cat, tags in self.tags.items():
            if cat not in CATEGORY_ORDER:
                for name, conf in tags.items():
                    yield name, cat, conf

    def all_tags(self) -> dict[str, float]:
        return {name: conf for name, _, conf in self.iter_tags()}

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.error is not None:
            out["error"] = self.error
            return out
        out["rating"] = self.rating
        out["ratings"] = {k: round(float(v), digits) for k, v in self.ratings.items()}
        out["tags"] = {cat: {k: round(float(v), digits) for k, v in tags.items()} for cat, tags in self.tags.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TagResult":
        return cls(
            path=data.get("path"),
            rating=data.get("rating"),
            ratings=dict(data.get("ratings") or {}),
            tags={k: dict(v) for k, v in (data.get("tags") or {}).items()},
            error=data.get("error"),
        )

    @classmethod
    def failed(cls, path: str | None, error: str) -> "TagResult":
        return cls(path=path, error=error)
