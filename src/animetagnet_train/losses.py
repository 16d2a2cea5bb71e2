"""Multi-label losses for long-tailed tags: BCE and asymmetric loss (ASL), optional per-tag weights."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import LossConfig


class MultiLabelLoss(nn.Module):
    """Mean over images of the (weighted) sum over tags, divided by the tag count (scale-free in T)."""

    def __init__(self, cfg: LossConfig, tag_weights: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("tag_weights", tag_weights if tag_weights is not None else torch.empty(0), persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.cfg.label_smoothing > 0:
            eps = self.cfg.label_smoothing
            targets = targets * (1.0 - eps) + eps / targets.shape[1]
        if self.cfg.name == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        else:
            loss = asymmetric_loss(logits, targets, self.cfg.gamma_neg, self.cfg.gamma_pos, self.cfg.clip)
        if self.tag_weights.numel():
            loss = loss * self.tag_weights
        return loss.mean()


def asymmetric_loss(logits, targets, gamma_neg: float, gamma_pos: float, clip: float) -> torch.Tensor:
    """ASL (Ridnik et al. 2021): focusing that down-weights easy negatives, plus probability shifting."""
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    log_pos = F.logsigmoid(logits)
    # log(1 - p_neg), stable: for clip == 0 it is logsigmoid(-x).
    log_neg = torch.log((1 - p_neg).clamp(min=1e-8)) if clip > 0 else F.logsigmoid(-logits)
    pos = targets * log_pos * (1 - p).pow(gamma_pos) if gamma_pos else targets * log_pos
    neg = (1 - targets) * log_neg * p_neg.pow(gamma_neg)
    return -(pos + neg)


def frequency_weights(counts: np.ndarray, mode: str) -> torch.Tensor | None:
    """Per-tag weights from training counts, normalised to mean 1 (so the loss scale stays put)."""
    if mode == "none":
        return None
    w = 1.0 / np.sqrt(np.maximum(counts, 1).astype(np.float64))
    w = w / w.mean()
    return torch.tensor(w, dtype=torch.float32)


def build(cfg: LossConfig, counts: np.ndarray) -> MultiLabelLoss:
    return MultiLabelLoss(cfg, frequency_weights(counts, cfg.tag_weights))
