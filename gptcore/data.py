"""Token shards on disk, and the loader that feeds training from them.

A prepared dataset is a folder (made by `python data/prepare.py`, see gptcore/corpora.py):

    meta.json            tokenizer, vocab_size, train_tokens, val_tokens, train_shards, val_shards, source,
                         input_hash, options, format_version (written last: its presence means complete)
    train_000000.bin     train shards, in order
    val_000000.bin       val shards, in order

Shard format (version 1): a 256-byte header, then the tokens.
    bytes 0-7     magic b"GPTCSHRD"
    bytes 8-11    format version, uint32 little-endian (1)
    bytes 12-15   dtype code, uint32 little-endian (1 = uint16 little-endian, the only one so far)
    bytes 16-23   token count n, uint64 little-endian
    bytes 24-255  zero
    bytes 256-    n tokens, 2 bytes each
A reader checks the magic, the version, the dtype code and that the file is exactly 256 + 2*n bytes long, so a
truncated or foreign file fails with an error that names it. Writers write to a temp name and rename, so a shard
under its final name is always complete.
"""

import json
import os
import struct

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .errors import GPTCoreError
from .fileio import atomic_path, write_json

MAGIC = b"GPTCSHRD"
FORMAT_VERSION = 1
HEADER_BYTES = 256
_HEADER = struct.Struct("<8sIIQ")
DTYPES = {1: np.dtype("<u2")}
TOKEN_DTYPE_CODE = 1
META_FILE = "meta.json"
SPLITS = ("train", "val")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def write_shard(path: str, tokens: np.ndarray):
    """Writes a 1-D array of token ids (each in [0, 65535]) as one shard, atomically."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"a shard holds a 1-D array of tokens, got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() > 65535):
        raise ValueError("token ids must fit in uint16 (0..65535)")
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, TOKEN_DTYPE_CODE, tokens.size).ljust(HEADER_BYTES, b"\0")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(header)
            # tofile writes straight from the array; tobytes() would first copy it (up to a 200 MB shard)
            tokens.astype(DTYPES[TOKEN_DTYPE_CODE], copy=False).tofile(f)


def _corrupt(path: str, why: str) -> GPTCoreError:
    return GPTCoreError(f"shard {path} is truncated or corrupt ({why}): re-run `python data/prepare.py` "
                        "with the same options to rebuild it")


def shard_token_count(path: str) -> int:
    """The number of tokens in a shard, after checking its header against its size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except FileNotFoundError:
        raise GPTCoreError(f"shard {path} is missing: re-run `python data/prepare.py` with the same options") from None
    if size < HEADER_BYTES:
        raise _corrupt(path, f"{size} bytes, shorter than the {HEADER_BYTES}-byte header")
    magic, version, dtype_code, count = _HEADER.unpack(head)
    if magic != MAGIC:
        raise _corrupt(path, f"magic {magic!r} is not {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise _corrupt(path, f"format version {version}, this gptcore reads version {FORMAT_VERSION}")
    if dtype_code not in DTYPES:
        raise _corrupt(path, f"unknown dtype code {dtype_code}")
    expected = HEADER_BYTES + count * DTYPES[dtype_code].itemsize
    if size != expected:
        raise _corrupt(path, f"header says {count} tokens, {expected} bytes, but the file has {size} bytes")
    return count


def read_tokens(path: str, start: int = 0, count: int | None = None) -> np.ndarray:
    """Tokens [start, start+count) of a shard (all from start if count is None), as a fresh uint16 array.

    Reads only those bytes: nothing stays mapped, so memory does not grow however long a run reads.
    """
    total = shard_token_count(path)
    count = total - start if count is None else count
    if start < 0 or count < 0 or start + count > total:
        raise ValueError(f"tokens [{start}, {start + count}) are outside shard {path} of {total} tokens")
    return _read_span(path, start, count)


def _read_span(path: str, start: int, count: int) -> np.ndarray:
    """Tokens [start, start+count) of a shard whose header the caller already checked: the read alone."""
    dtype = DTYPES[TOKEN_DTYPE_CODE]
    tokens = np.fromfile(path, dtype=dtype, count=count, offset=HEADER_BYTES + start * dtype.itemsize)
    if tokens.size != count:
        raise _corrupt(path, f"read {tokens.size} of {count} tokens")
    return tokens


def _stamp(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a file, or (-1, -1) if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def write_meta(data_dir: str, meta: dict):
    """Writes meta.json atomically; prepare writes it last, so its presence means the dataset is complete."""
    write_json(os.path.join(data_dir, META_FILE), meta, indent=1)


def read_meta(data_dir: str) -> dict:
    """A prepared dataset's meta.json as a dict."""
    path = os.path.join(data_dir, META_FILE)
    if not os.path.isfile(path):
        raise GPTCoreError(f"no prepared dataset at {data_dir}: run `python data/prepare.py` "
                           "(add --dataset NAME|PATH for another corpus) first")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GPTCoreError(f"{path} is corrupt: delete {data_dir} and re-run `python data/prepare.py`") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise GPTCoreError(f"{data_dir} was prepared in shard format {meta.get('format_version')}, this gptcore "
                           f"reads format {FORMAT_VERSION}: delete it and re-run `python data/prepare.py`")
    return meta


class ShardLoader(IterableDataset):
    """(x, y) batches of shape (batch_size, block_size) from one split of a prepared dataset, in a seeded order.

    Each shard is cut into chunks: chunk c is tokens[c*T : c*T + T + 1], x its first T tokens and y its last T, so
    every token of a shard but its last few (fewer than T+1) is an input exactly once per epoch.
    An epoch is a flat sequence of chunks: the shards in an order permuted from (seed, epoch), and within each shard
    its chunks permuted from (seed, epoch, shard). shuffle=False keeps the natural order (for val).
    Each next_batch() takes the next batch_size * world_size chunks of that sequence, running on into the next
    epoch when needed, and rank r keeps the r-th block of batch_size. So world_size ranks together see what one
    process sees over world_size times as many calls; DDP training and its single-process equivalent match.
    The state is (epoch, position in the epoch); the permutations are re-derived from the seed, so it stays tiny,
    and memory holds at most one shard's chunk permutation.
    """

    def __init__(self, data_dir: str, split: str = "train", *, batch_size: int, block_size: int, rank: int = 0,
                 world_size: int = 1, seed: int = 1337, shuffle: bool = True):
        if split not in SPLITS:
            raise GPTCoreError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        if batch_size < 1 or block_size < 1:
            raise GPTCoreError(f"batch_size and block_size must be at least 1, got {batch_size} and {block_size}")
        if seed < 0:
            raise GPTCoreError(f"the data order's seed must be a non-negative integer, got {seed}")
        if not 0 <= rank < world_size:
            raise GPTCoreError(f"rank {rank} is outside world_size {world_size}")
        meta = read_meta(data_dir)
        self.data_dir, self.split = data_dir, split
        self.batch_size, self.block_size = batch_size, block_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.input_hash = meta["input_hash"]
        self.vocab_size = meta["vocab_size"]
        self.files = [os.path.join(data_dir, name) for name in meta[f"{split}_shards"]]
        counts = [shard_token_count(f) for f in self.files]
        # what each shard was when its header was checked: a later change (a re-run of prepare.py, a truncation)
        # is caught by one stat per chunk rather than a header read
        self._stamps = [_stamp(f) for f in self.files]
        self.chunks_per_shard = [max(0, (n - 1) // block_size) for n in counts]
        self.chunks_per_epoch = sum(self.chunks_per_shard)
        if self.chunks_per_epoch == 0:
            raise GPTCoreError(f"the {split} split of {data_dir} has no shard with block_size+1 = {block_size + 1} "
                               f"tokens ({sum(counts)} tokens in all): use a smaller block_size or prepare more data")
        self.tokens_per_epoch = self.chunks_per_epoch * block_size
        self._order_cache = (None, None)  # (epoch, (shard order, first position of each shard in it))
        self._perm_cache = (None, None)   # ((epoch, shard), chunk permutation)
        self.reset()

    def reset(self):
        """Back to the first batch of epoch 0."""
        self.epoch, self.position = 0, 0

    def _shard_order(self, epoch: int) -> tuple[list[int], np.ndarray]:
        if self._order_cache[0] != epoch:
            order = list(range(len(self.files)))
            if self.shuffle:
                order = np.random.default_rng((self.seed, epoch)).permutation(len(self.files)).tolist()
            order = [s for s in order if self.chunks_per_shard[s] > 0]
            starts = np.cumsum([0] + [self.chunks_per_shard[s] for s in order])
            self._order_cache = (epoch, (order, starts))
        return self._order_cache[1]

    def _chunk_index(self, epoch: int, shard: int, i: int) -> int:
        if not self.shuffle:
            return i
        if self._perm_cache[0] != (epoch, shard):
            rng = np.random.default_rng((self.seed, epoch, shard))
            self._perm_cache = ((epoch, shard), rng.permutation(self.chunks_per_shard[shard]))
        return int(self._perm_cache[1][i])

    def _read_chunk(self, epoch: int, position: int) -> np.ndarray:
        """The T+1 tokens at `position` of epoch `epoch`'s chunk sequence."""
        order, starts = self._shard_order(epoch)
        k = int(np.searchsorted(starts, position, side="right")) - 1
        shard = order[k]
        chunk = self._chunk_index(epoch, shard, position - int(starts[k]))
        # __init__ checked every shard's header; a chunk read needs only the raw read, if the file is unchanged
        path = self.files[shard]
        if _stamp(path) != self._stamps[shard]:
            raise GPTCoreError(f"shard {path} changed while this run was reading it (its size or modification time "
                               "is not what it was at the start): re-run `python data/prepare.py` with the same "
                               "options, then train.py again; it resumes from the last checkpoint")
        tokens = _read_span(path, chunk * self.block_size, self.block_size + 1)
        if int(tokens.max()) >= self.vocab_size:
            raise _corrupt(path, f"token id {int(tokens.max())} is outside the vocabulary of {self.vocab_size}")
        return tokens

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: int64 (batch_size, block_size) on the CPU; y[b, t] is the token after x[b, t]."""
        first = self.position + self.rank * self.batch_size
        rows = []
        for p in range(first, first + self.batch_size):
            epoch, position = divmod(p, self.chunks_per_epoch)
            rows.append(self._read_chunk(self.epoch + epoch, position))
        batch = np.stack(rows).astype(np.int64)
        epochs, self.position = divmod(self.position + self.batch_size * self.world_size, self.chunks_per_epoch)
        self.epoch += epochs
        return torch.from_numpy(batch[:, :-1].copy()), torch.from_numpy(batch[:, 1:].copy())

    def __iter__(self):
        """As a torch IterableDataset: the rows of batch after batch, endlessly; a DataLoader with the same batch_size
        and num_workers=0 puts them back together, and state_dict() stays exactly at what it handed out."""
        while True:
            x, y = self.next_batch()
            yield from zip(x, y)

    def state_dict(self) -> dict:
        """A small JSON-able dict; load_state_dict() of it resumes with exactly the batches that would have come next.

        It is the same on every rank, and holds no batch size, so a run may resume with another batch_size or
        world_size and still see each chunk of the epoch once.
        """
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "block_size": self.block_size, "split": self.split, "input_hash": self.input_hash}

    def load_state_dict(self, state: dict):
        for key in ("seed", "shuffle", "block_size", "split", "input_hash"):
            if state.get(key) != getattr(self, key):
                raise GPTCoreError(f"the saved data loader state has {key}={state.get(key)!r} but this loader has "
                                   f"{getattr(self, key)!r}: resume with the same dataset, seed and block_size")
        if not 0 <= state.get("position", -1) < self.chunks_per_epoch:
            raise GPTCoreError(f"the saved data loader position {state['position']} is outside this dataset's "
                               f"{self.chunks_per_epoch} chunks per epoch: resume with the same dataset")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
