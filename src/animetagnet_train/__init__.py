"""AnimeTagNet training: timm multi-label taggers trained on a prepared dataset directory, exported in WD layout.

Optional extra `train` (torch, timm, safetensors, onnx, PyYAML, tqdm). The inference core
(`animetagnet`) never imports this package.
"""

from .errors import TrainingError

__all__ = ["TrainingError"]
