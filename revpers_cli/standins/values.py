"""Seeded values for stand-in tensors: every tensor of every stand-in file comes from its own generator,
seeded from the file's seed and the tensor's key, so a file is the same whatever order it is written in
and whichever subset of it is made."""
import hashlib
import math

import torch


def seeded_generator(seed, key) -> torch.Generator:
    """A CPU generator for one tensor: seeded from sha256 of the seed and the tensor's key."""
    digest = hashlib.sha256(f"revpers-standin/{seed}/{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def seeded_normal(seed, key, shape) -> torch.Tensor:
    """Standard normal values of `shape` from the tensor's own generator."""
    return torch.randn(tuple(shape), generator=seeded_generator(seed, key))


def checkpoint_value(seed, key, shape) -> torch.Tensor:
    """A checkpoint tensor with scales that keep a random network finite through the whole pipeline:
    normalisation weights 1 and biases 0 (every 1-D `.weight` in these models is a norm scale), other
    biases small, weights and embeddings N(0, 1/fan_in) so each layer keeps its input's scale, CLIP's
    logit scale ln(100) as in the real models."""
    shape = tuple(shape)
    if key.endswith("logit_scale"):
        return torch.full(shape, math.log(100.0))
    if len(shape) == 1 and key.endswith(".weight"):
        return torch.ones(shape)
    x = seeded_normal(seed, key, shape)
    if len(shape) <= 1:
        return x * 0.02
    fan_in = math.prod(shape[1:])
    return x / math.sqrt(fan_in)
