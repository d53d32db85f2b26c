"""Detecting non-finite (NaN/Inf) results per sample: the black images of an overflowing fp16 VAE."""
from dataclasses import dataclass

import torch

from .dtypes import name_of


def nonfinite_samples(tensor):
    """Indices of the batch entries that contain NaN or Inf."""
    flat = tensor.reshape(tensor.shape[0], -1)
    return torch.nonzero(~torch.isfinite(flat).all(dim=1)).flatten().cpu()


@dataclass
class Fallback:
    from_dtype: torch.dtype
    to_dtype: torch.dtype
    failed: int
    total: int

    def __str__(self):
        return f"{name_of(self.from_dtype)}->{name_of(self.to_dtype)} ({self.failed} of {self.total})"
