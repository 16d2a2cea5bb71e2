"""What an exported WD model computes around the trained network: the label-file layout, the rating
rows a dataset never labelled, the 448 px input that positional tools hard-code, and the embedding.

The ONNX file takes [N, S, S, 3] float32 BGR 0..255 and returns two outputs, as the
embedding-carrying WD exports do: `output` [N, tags] probabilities in label-file order and
`embedding` [N, D], the pooled features the classifier head reads. A flip-averaged export
(`export --flip-average`) computes both as the mean over the image and its mirror, inside the
graph, so every tool that reads the file gets the test-time flip without knowing of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from animetagnet.vocab import RATING_IDS, RATING_NAMES, Category, Tag, Vocabulary, wd_layout_problems

from .errors import TrainingError

log = logging.getLogger(__name__)

OUTPUT_NAME, EMBEDDING_NAME = "output", "embedding"
#: What the four rating outputs are when the dataset had no rating labels (recorded in animetagnet.json).
UNTRAINED_RATING_VALUE = 0.0
#: animetagnet.json `preprocessing.test_time` of a flip-averaged export.
FLIP_AVERAGE = "flip-average"


@dataclass
class LabelPlan:
    """How the network's outputs become the rows of the exported label file."""

    vocab: Vocabulary  # the label file to write (WD v3 layout)
    added_ratings: bool  # the run's vocabulary had no rating rows: four constant rows are prepended
    ratings_trained: bool

    def metadata(self) -> dict:
        """The `labels` entry of animetagnet.json."""
        out = {"layout": "wd-v3", "ratings": "trained" if self.ratings_trained else "untrained"}
        if not self.ratings_trained:
            out["rating_outputs"] = (
                f"constant {UNTRAINED_RATING_VALUE}: the dataset has no rating labels, so rows 0-3 exist only "
                "for positional readers; animetagnet shows no rating for this model"
            )
        if self.added_ratings:
            out["rating_rows"] = "added at export (the run's label file predates the WD layout)"
        return out


def plan_labels(run_vocab: Vocabulary, rating_positives: int) -> LabelPlan:
    """The exported label file for a run's vocabulary, or a TrainingError naming the rows that break the layout.

    A vocabulary with no rating rows at all (datasets prepared before the WD layout) gets the four
    rows prepended; any other departure from the layout is refused.
    """
    problems = wd_layout_problems(run_vocab, require_ratings=False)
    if problems:
        raise TrainingError(
            "the label file breaks the WD v3 layout that kohya, the A1111 and ComfyUI taggers read by position: "
            + "; ".join(problems)
            + ". Re-run `animetagnet prepare` (it writes the WD layout) and train on that dataset."
        )
    added = not run_vocab.indices(Category.RATING).size
    if added:
        vocab = Vocabulary([Tag(r, Category.RATING, 0, RATING_IDS[r]) for r in RATING_NAMES] + list(run_vocab))
    else:
        vocab = run_vocab
    assert not wd_layout_problems(vocab)
    return LabelPlan(vocab=vocab, added_ratings=added, ratings_trained=not added and rating_positives > 0)


def pil_resize_matrix(src: int, dst: int) -> np.ndarray:
    """[dst, src] weights of Pillow's BICUBIC resize of a length-`src` line to `dst` (antialiased when shrinking).

    Pillow resamples separably with these weights, so resizing an image is R @ X @ R.T; computed
    by resizing each unit impulse in float mode (no rounding), so they are Pillow's own numbers.
    """
    m = np.zeros((dst, src), dtype=np.float64)
    for j in range(src):
        line = np.zeros((1, src), dtype=np.float32)
        line[0, j] = 1.0
        m[:, j] = np.asarray(Image.fromarray(line, mode="F").resize((dst, 1), Image.BICUBIC))[0]
    return m.astype(np.float32)


class ExportGraph(torch.nn.Module):
    """The trained Tagger wrapped for ONNX: optional input resize, sigmoid, label plan, embedding,
    optional mean over the image and its mirror (`flip_average`)."""

    def __init__(self, net: torch.nn.Module, plan: LabelPlan, network_size: int, input_size: int,
                 flip_average: bool = False):
        super().__init__()
        self.net = net
        self.plan = plan
        self.flip_average = flip_average
        self.resize = input_size != network_size
        if self.resize:
            self.register_buffer("rmat", torch.from_numpy(pil_resize_matrix(input_size, network_size)), persistent=False)
        n_net = len(plan.vocab) - (len(RATING_NAMES) if plan.added_ratings else 0)
        keep = torch.ones(n_net)
        if not plan.ratings_trained and not plan.added_ratings:
            keep[: len(RATING_NAMES)] = 0.0  # untrained rating rows: a constant, not the noise of an unlabelled head
        self.register_buffer("keep", keep, persistent=False)
        self.pad_ratings = plan.added_ratings

    def resize_input(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC [N, S, S, 3] -> [N, s, s, 3] with Pillow's bicubic weights: rows, then columns."""
        x = x.float().permute(0, 3, 1, 2)  # N, C, H, W
        x = torch.matmul(torch.matmul(self.rmat, x), self.rmat.t())
        return x.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor):
        if self.resize:
            x = self.resize_input(x)
        if self.flip_average:
            x = torch.cat([x, x.flip(2)])  # NHWC: axis 2 is the width; one batch of 2N, not two runs
        backbone = self.net.backbone
        feats = backbone.forward_features(self.net.normalise(x))
        embedding = backbone.forward_head(feats, pre_logits=True).flatten(1)
        probs = torch.sigmoid(backbone.forward_head(feats))
        if self.flip_average:
            # Probabilities (not logits) are averaged: what a user would get tagging both and averaging.
            probs = probs.reshape(2, -1, probs.shape[1]).mean(0)
            embedding = embedding.reshape(2, -1, embedding.shape[1]).mean(0)
        probs = probs * self.keep
        if self.pad_ratings:
            probs = torch.cat([torch.zeros_like(probs[:, :1]).expand(-1, len(RATING_NAMES)) + UNTRAINED_RATING_VALUE,
                               probs], dim=1)
        return probs, embedding
