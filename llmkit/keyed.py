"""Counter-based random numbers: a value is a hash of its key, so any process draws the same one.

Masks and the training order come from here instead of a generator's state: the draw for (seed, epoch,
sample, position) does not depend on what was drawn before, how samples are batched, how many processes
share the work, or whether the run was resumed. Vectorised over numpy arrays (SplitMix64 finaliser).
"""

from __future__ import annotations

import numpy as np

_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic): a bijective, well-mixed hash."""
    with np.errstate(over="ignore"):
        z = np.asarray(z, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def hash64(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of (seed, key, key, ...), broadcast over the keys' shapes (non-negative integers)."""
    h = mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    for key in keys:
        h = mix(h ^ np.asarray(key).astype(np.uint64))
    return h


def uniform(seed: int, *keys: np.ndarray | int) -> np.ndarray:
    """Floats in [0, 1) keyed by (seed, keys...), broadcast over the keys' shapes."""
    return (hash64(seed, *keys) >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def permutation(positions: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """The images of `positions` under a keyed pseudo-random permutation of range(n).

    A 4-round Feistel network on the smallest even number of bits that covers n, with cycle walking back
    into range: a bijection of range(n) computed in O(len(positions)) time and memory, for any n.
    """
    bits = max(2, int(n - 1).bit_length())
    bits += bits % 2
    half = np.uint64(bits // 2)
    low = np.uint64((1 << (bits // 2)) - 1)
    keys = [hash64(seed, epoch, r) for r in range(4)]

    def feistel(x: np.ndarray) -> np.ndarray:
        left, right = x >> half, x & low
        for key in keys:
            left, right = right, left ^ (mix(right ^ key) & low)
        return (left << half) | right

    out = feistel(np.asarray(positions, dtype=np.uint64))
    outside = out >= np.uint64(n)
    while outside.any():
        out[outside] = feistel(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64)
