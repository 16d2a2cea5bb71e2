"""Dataset ingestion: read tagged image collections, curate the tag vocabulary, write splits.

The entry point is `prepare.prepare_dataset` (CLI: `animetagnet prepare SOURCE --out DIR`).
Readers stream their source and report what they skipped; nothing here imports torch.
"""

from .records import Record, SkipLog, normalize_tag
from .splits import DEFAULT_RATIOS, split_of

__all__ = ["DEFAULT_RATIOS", "Record", "SkipLog", "normalize_tag", "split_of"]
