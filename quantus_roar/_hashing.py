"""Counter-based hashing: seeded pseudo-random numbers keyed by (seed, sample id, index).

A sample's draws depend only on the seed, its id and the index, never on the
batch it came in or on the device, so chunked and batched computations give
the same numbers. Used by the removal engine (tie-breaking, imputation noise)
and by the explainers (the Random control, SmoothGrad's noise seed).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "STREAM_NOISE_A", "STREAM_NOISE_B", "STREAM_RANDOM", "STREAM_TIES", "content_keys",
    "hash_keys", "hash_normal", "mix32",
]

M32 = 0xFFFFFFFF
# Independent streams of draws from one seed.
STREAM_TIES, STREAM_NOISE_A, STREAM_NOISE_B = 0x5EED7135, 0x0B5E55ED, 0x7A11C0DE
STREAM_RANDOM = 0x2A4D0F17


def mix32(x: Any) -> Any:
    """Bijective 32-bit integer hash (works on Python ints and int64 tensors)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    return (x >> 16) ^ x


def hash_keys(
    seed: int, stream: int, sample_ids: torch.Tensor, n_features: int
) -> torch.Tensor:
    """Pseudo-random int64 keys in [0, 2**32), shape (N, n_features).

    Keys within one sample are all distinct (the hash is a bijection), so
    sorting by them gives a uniformly shuffled order without ties.
    """
    seed = int(seed)
    h0 = mix32(mix32((seed & M32) ^ stream) ^ ((seed >> 32) & M32))
    h = mix32(mix32((sample_ids.to(torch.int64) & M32) ^ h0))
    features = torch.arange(n_features, device=sample_ids.device, dtype=torch.int64)
    return mix32(h[:, None] ^ features[None, :])


def hash_normal(
    seed: int, sample_ids: torch.Tensor, n_features: int, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal draws of shape (N, n_features) by Box-Muller on hashed uniforms."""
    u1 = (hash_keys(seed, STREAM_NOISE_A, sample_ids, n_features).double() + 0.5) / 2.0**32
    u2 = (hash_keys(seed, STREAM_NOISE_B, sample_ids, n_features).double() + 0.5) / 2.0**32
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)).to(dtype)


def content_keys(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit key per sample computed from its values: the same image gets the same key."""
    bits = x.detach().float().reshape(len(x), -1).contiguous().view(torch.int32).to(torch.int64)
    pos = mix32(torch.arange(bits.shape[1], device=x.device, dtype=torch.int64) + 0x9E3779B9)
    return mix32((bits & 0xFFFFFFFF) ^ pos).sum(dim=1) & 0xFFFFFFFF
