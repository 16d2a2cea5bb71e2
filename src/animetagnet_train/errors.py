"""Training-specific user errors (subclasses of the core hierarchy, so the CLI prints one line)."""

from animetagnet.errors import AnimeTagNetError


class TrainingError(AnimeTagNetError):
    """A run cannot start or continue: bad dataset, vocabulary mismatch, out of memory, bad checkpoint."""
