"""AnimeTagNet: Danbooru-style tags for anime illustrations.

The inference core (this package) needs numpy, Pillow and onnxruntime only; it never imports
torch. Training lives in the separate `animetagnet_train` package (optional extra `train`).

    from animetagnet import Tagger
    tagger = Tagger("path/to/wd-model-dir")          # or a Hugging Face repo id
    result = tagger.tag("image.jpg")
    print(result.rating, result.general, result.character)
"""

__version__ = "0.1.0"

from .errors import AnimeTagNetError, DeviceError, ImageError, ModelError, UsageError  # noqa: E402
from .vocab import Category, Tag, Vocabulary  # noqa: E402

__all__ = [
    "AnimeTagNetError",
    "Category",
    "DeviceError",
    "ImageError",
    "ModelError",
    "Tag",
    "Tagger",
    "TagResult",
    "UsageError",
    "Vocabulary",
    "__version__",
]


def __getattr__(name: str):
    # Lazy so that `import animetagnet` stays cheap (onnxruntime loads on first use).
    if name == "Tagger":
        from .tagger import Tagger

        return Tagger
    if name == "TagResult":
        from .results import TagResult

        return TagResult
    raise AttributeError(name)
