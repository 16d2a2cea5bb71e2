"""Dataset ingestion: read tagged image collections, curate the tag vocabulary, write splits.

The entry point is `prepare_dataset` (CLI: `animetagnet prepare SOURCE --out DIR`); consumers
read a prepared directory with `open_dataset` (the one validator, raising `DatasetError`),
`read_info`, `read_vocabulary` and `read_split`/`iter_split`.
Readers stream their source and report what they skipped; nothing here imports torch.
"""

from .load import DatasetDirectory, DatasetError, Example, iter_split, open_dataset, read_info, read_split, read_vocabulary
from .prepare import PrepareOptions, prepare_dataset
from .records import Record, SkipLog, normalize_tag
from .splits import DEFAULT_RATIOS, split_of

__all__ = [
    "DEFAULT_RATIOS", "DatasetDirectory", "DatasetError", "Example", "PrepareOptions", "Record", "SkipLog",
    "iter_split", "normalize_tag", "open_dataset", "prepare_dataset", "read_info", "read_split", "read_vocabulary", "split_of",
]
