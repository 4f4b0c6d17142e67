"""Training examples read from prepared shards: nothing is loaded, any block length works.

`TokenBlocks` cuts a prepared split into examples at read time: packed (the split's documents concatenated
in order, cut into blocks of `max_seq_length`; only the last block may be shorter, no token is dropped) or
one example per document (truncated, keeping its closing special token). An example is its token ids and its
index, which keys its masks (`masking.KeyedMasking`).

Blocks are read with positioned reads (`os.pread`) through the OS page cache, which every rank of a machine
shares. Measured against a memory map: the same cost per block (~10 us), but a memory map puts every page it
touches, and its cached neighbours, into the process's RSS (~45 KB per random block), so a long run's RSS
would grow towards the corpus size; with reads it stays flat.

`KeyedShuffle` orders an epoch by a keyed permutation (`keyed.permutation`): O(1) memory for any number
of blocks, the same order on every rank, and a resumed run finds its place without replaying data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from llmkit import keyed


class TokenBlocks:
    """The examples of one split of a prepared folder (see the module docstring)."""

    def __init__(self, folder: str | Path, split: str, manifest: dict[str, Any], max_seq_length: int,
                 packing: bool = True, keep_last: bool = True):
        shards = manifest["splits"][split]["shards"]
        self.folder, self.split = Path(folder), split
        self.length, self.packing, self.keep_last = max_seq_length, packing, keep_last
        self.dtype = np.dtype(manifest["dtype"])
        self.names = [s["name"] for s in shards]
        self.token_starts = np.concatenate([[0], np.cumsum([s["tokens"] for s in shards])]).astype(np.int64)
        self.doc_starts = np.concatenate([[0], np.cumsum([s["documents"] for s in shards])]).astype(np.int64)
        self._files: dict[tuple[str, int], ShardFile] = {}

    @property
    def num_tokens(self) -> int:
        return int(self.token_starts[-1])

    @property
    def num_documents(self) -> int:
        return int(self.doc_starts[-1])

    def __len__(self) -> int:
        if self.packing:
            return -(-self.num_tokens // self.length)
        return self.num_documents

    def __getstate__(self) -> dict[str, Any]:  # data loader workers open the files again
        return {**self.__dict__, "_files": {}}

    def file(self, kind: str, shard: int) -> "ShardFile":
        key = (kind, shard)
        if key not in self._files:
            base = self.folder / self.split / self.names[shard]
            self._files[key] = ShardFile(Path(f"{base}.tokens"), self.dtype) if kind == "tokens" else \
                ShardFile.npy(Path(f"{base}.docs.npy"))
        return self._files[key]

    def ids(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"example {i} out of range ({len(self)} examples)")
        if self.packing:
            return self.span(i * self.length, min((i + 1) * self.length, self.num_tokens))
        shard = int(np.searchsorted(self.doc_starts, i, side="right")) - 1
        j = i - int(self.doc_starts[shard])
        start, stop = (int(x) for x in self.file("docs", shard).read(j, j + 2))
        ids = self.file("tokens", shard).read(start, stop)
        if len(ids) > self.length:
            ids = np.concatenate([ids[:self.length - 1], ids[-1:]]) if self.keep_last else ids[:self.length]
        return ids

    def span(self, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of the split's concatenated documents (a block may straddle two shards)."""
        shard = int(np.searchsorted(self.token_starts, lo, side="right")) - 1
        parts = []
        while lo < hi:
            start, end = int(self.token_starts[shard]), min(hi, int(self.token_starts[shard + 1]))
            parts.append(self.file("tokens", shard).read(lo - start, end - start))
            lo, shard = end, shard + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.ids(int(i)), "index": int(i)}

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]

    def sample(self, n: int | None, seed: int) -> "Selection":
        """A seeded, evenly spread subset of at most `n` examples (all of them when n is None or larger)."""
        total = len(self)
        if n is None or n >= total:
            return Selection(self, np.arange(total))
        return Selection(self, np.sort(keyed.permutation(np.arange(n), total, seed, 0)))


class ShardFile:
    """A flat array stored in a file (raw, or after an .npy header), read by position (`os.pread`)."""

    def __init__(self, path: Path, dtype: np.dtype, offset: int = 0):
        self.path, self.dtype, self.offset = path, np.dtype(dtype), offset
        self.fd: int | None = None

    @classmethod
    def npy(cls, path: Path) -> "ShardFile":
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            _, _, dtype = read_header(f)
            return cls(path, dtype, f.tell())

    def read(self, lo: int, hi: int) -> np.ndarray:
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        size = self.dtype.itemsize
        return np.frombuffer(os.pread(self.fd, (hi - lo) * size, self.offset + lo * size), dtype=self.dtype)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "fd": None}

    def __del__(self) -> None:
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)


class Selection:
    """Some examples of a `TokenBlocks`, renumbered 0..n-1 (the new index keys their masks)."""

    def __init__(self, blocks: TokenBlocks, indices: np.ndarray):
        self.blocks, self.indices = blocks, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_tokens(self) -> int:
        return int(sum(len(self.blocks.ids(int(i))) for i in self.indices))

    def __getitem__(self, k: int) -> dict[str, Any]:
        return {"input_ids": self.blocks.ids(int(self.indices[k])), "index": int(k)}

    def __getitems__(self, ks: list[int]) -> list[dict[str, Any]]:
        return [self[k] for k in ks]


class KeyedShuffle:
    """A sampler over range(n) in a keyed pseudo-random order, new each epoch (the Trainer calls set_epoch)."""

    CHUNK = 1 << 16

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for start in range(0, self.n, self.CHUNK):
            positions = np.arange(start, min(start + self.CHUNK, self.n))
            yield from keyed.permutation(positions, self.n, self.seed, self.epoch).tolist()
