"""The exception hierarchy: every failure a user can cause is one of these, with a clear message.

The CLI turns them into one-line messages and exit codes; the HTTP service into one JSON shape.
"""


class AnimeTagNetError(Exception):
    """Base of all errors this package raises on purpose."""


class ModelError(AnimeTagNetError):
    """A model directory, label file or metadata file is missing or inconsistent."""


class ImageError(AnimeTagNetError):
    """An input file cannot be used as an image (broken, empty, not an image, too large)."""

    def __init__(self, reason: str, path: str | None = None):
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class DeviceError(AnimeTagNetError):
    """The requested execution device or provider is not available."""


class UsageError(AnimeTagNetError):
    """Options that do not make sense together, or a bad option value."""


class WriteError(AnimeTagNetError):
    """Results could not be written mid-run (disk full, file gone); the run stops, what was written stays whole."""

    #: Exit status: some images are not done (as for failed images); a rerun continues.
    exit_code = 1
