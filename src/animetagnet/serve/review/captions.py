"""One caption file: found beside its image, read strictly as UTF-8, parsed, written back atomically in its own style.

A caption keeps each tag exactly as the file spells it (`long hair`, `irys \\(hololive\\)`,
`(smile:1.2)`); comparisons use `formatting.normalize_tag`. Tags the reviewer adds are written
in the style the file already uses (spaces or underscores, escaped parentheses, separator), so
a reviewed folder stays in the layout its training tool expects. A file that is not UTF-8 is
reported as unreadable and never rewritten. Every path here comes from our own scan of the
folder, resolved through `animetagnet.confine` (`inside`), never from a client.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ...confine import NotConfined, Root, confined_path
from ...datasets.folders import CAPTION_SUFFIXES
from ...fileio import atomic_write_text
from ...formatting import KAOMOJI, CaptionStyle, normalize_tag


#: A stored path that does not resolve to a file inside the reviewed folder (a symlink out of it, say).
OutsideFolder = NotConfined


def inside(root: Path, rel: str) -> Path:
    """The file `rel` below `root` through `animetagnet.confine`: a regular file whose real path is inside
    the folder, or, for a caption not written yet, a name whose real parent folder is inside it."""
    base = Root.of(root)
    full = os.path.normpath(os.path.join(base.path, rel))
    if not base.contains(full):
        raise NotConfined("outside the reviewed folder", rel)
    if os.path.lexists(full):
        return Path(confined_path(base, rel))
    if not base.contains(os.path.realpath(os.path.dirname(full))):
        raise NotConfined("in a folder that resolves outside the reviewed folder", rel)
    return Path(full)


def caption_name(image_rel: str, siblings: set[str], extension: str = ".txt") -> str:
    """The caption file of an image: an existing one prepare would read (first in sorted order), else stem+extension."""
    head, fname = os.path.split(image_rel)
    stem = os.path.splitext(fname)[0]
    existing = sorted(n for n in siblings if os.path.splitext(n)[0] == stem and n.lower().endswith(CAPTION_SUFFIXES))
    name = existing[0] if existing else stem + extension
    return os.path.join(head, name) if head else name


@dataclass
class Style:
    """How a caption file writes its tags (detected from the file; defaults for a new one)."""

    spaces: bool = False
    escape_parens: bool = False
    separator: str = ", "

    def to_dict(self) -> dict:
        return {"spaces": self.spaces, "escape_parens": self.escape_parens, "separator": self.separator}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Style":
        return cls(**(d or {}))

    def format(self, tag: str) -> str:
        """A canonical tag (underscores) in this file's spelling, through the tagger's own formatter."""
        return CaptionStyle(spaces=self.spaces, escape_parens=self.escape_parens).format_name(normalize_tag(tag))


@dataclass
class Caption:
    """What is on disk now: state ok / missing / unreadable, the tags as written, and the file's fingerprint."""

    state: str
    tags: list[str]
    style: Style
    sha1: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    error: str | None = None


def split_tags(text: str) -> list[str]:
    """Comma- (or newline-) separated tags as written, blanks and repeats (by normalized form) dropped."""
    out: list[str] = []
    seen: set[str] = set()
    for part in re.split(r"[,\n]", text):
        raw = part.strip()
        key = normalize_tag(raw) if raw else ""
        if key and key not in seen:
            seen.add(key)
            out.append(raw)
    return out


def detect_style(text: str, tags: list[str]) -> Style:
    spaced = [t for t in tags if " " in t and t not in KAOMOJI]
    underscored = [t for t in tags if "_" in t and t not in KAOMOJI]
    sep = ", " if (", " in text or "," not in text) else ","
    return Style(spaces=len(spaced) > len(underscored), escape_parens="\\(" in text, separator=sep)


def read(path: Path) -> Caption:
    """The caption at `path` as it is now (never raises for a missing or undecodable file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Caption("missing", [], Style())
    except OSError as exc:
        return Caption("unreadable", [], Style(), error=f"cannot read: {exc.strerror or exc}")
    st = path.stat()
    digest = hashlib.sha1(data).hexdigest()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Caption("unreadable", [], Style(), digest, st.st_size, st.st_mtime_ns,
                       error=f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); never rewritten")
    tags = split_tags(text)
    return Caption("ok", tags, detect_style(text, tags), digest, st.st_size, st.st_mtime_ns)


def unchanged(path: Path, sha1: str | None, size: int | None, mtime_ns: int | None) -> bool:
    """Whether the file is still what we last read or wrote: (size, mtime) first, then the content hash."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return sha1 is None
    if sha1 is None:
        return False  # it appeared since
    if st.st_size == size and st.st_mtime_ns == mtime_ns:
        return True
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest() == sha1
    except OSError:
        return False


def write(path: Path, tags: list[str], style: Style) -> Caption:
    """Write the tags atomically (fileio's writer) and return the new fingerprint."""
    text = style.separator.join(tags) + "\n" if tags else ""
    atomic_write_text(path, text)
    return read(path)


def remove(path: Path) -> None:
    """Delete a caption file we created (undo of the first edit of an uncaptioned image)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
