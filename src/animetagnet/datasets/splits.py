"""Deterministic train/val/test assignment: a pure function of a record's group key.

    bucket = int(sha1(key.encode("utf-8")).hexdigest()[:8], 16) % 10_000
    train if bucket < 100 * train_pct; val if bucket < 100 * (train_pct + val_pct); else test

No seed, no state, no dependence on the other records: the same key gets the same split on
any machine, in any order, in any subset of the data. Records that share a key (crops of one
post, a post and its children, byte-identical copies) therefore never straddle splits.
"""

from __future__ import annotations

import hashlib

from ..errors import UsageError

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = (80.0, 10.0, 10.0)
BUCKETS = 10_000


def bucket_of(key: str) -> int:
    """The key's bucket in [0, 10000)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % BUCKETS


def split_of(key: str, ratios: tuple[float, float, float] = DEFAULT_RATIOS) -> str:
    """'train', 'val' or 'test' for a group key; ratios are percentages summing to 100."""
    b = bucket_of(key)
    train_end = round(ratios[0] * BUCKETS / 100)
    val_end = round((ratios[0] + ratios[1]) * BUCKETS / 100)
    if b < train_end:
        return "train"
    if b < val_end:
        return "val"
    return "test"


def parse_ratios(text: str) -> tuple[float, float, float]:
    """'80/10/10' (or '0.8,0.1,0.1') -> (80.0, 10.0, 10.0); must sum to 100 (or 1)."""
    parts = [p for p in text.replace(",", "/").replace(":", "/").split("/") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UsageError(f"--split {text!r}: expected three numbers like 80/10/10") from None
    if len(values) != 3 or any(v < 0 for v in values):
        raise UsageError(f"--split {text!r}: expected three non-negative numbers like 80/10/10")
    total = sum(values)
    if abs(total - 1.0) < 1e-6:
        values = [v * 100 for v in values]
    elif abs(total - 100.0) > 1e-6:
        raise UsageError(f"--split {text!r}: the three parts must sum to 100 (or to 1)")
    if values[0] <= 0:
        raise UsageError(f"--split {text!r}: the training split cannot be empty")
    return (values[0], values[1], values[2])
