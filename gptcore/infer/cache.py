"""The KV cache generation owns and hands to the model: preallocated once, reused across calls.

The model's forward(idx, cache=cache) reads three things from it and calls one method per layer:
  cache.positions  (B, T) long: the position of each input token in its own sequence (rows may differ);
  cache.last       (B,) long: which input column's logits to return, one per row;
  cache.layers[i].update(k, v) -> (keys, values, mask): writes layer i's new keys and values (B, nh, T, hs) at
                   their positions and returns every key and value the queries may see, (B, nh, L, hs), with the
                   boolean mask (B, 1, T, L) of which ones each query sees.
The engine sets these before each forward with bind(). The model imports nothing from here (duck typing).

Rows are independent sequences: a query at position p sees its own row's keys at positions 0..p. Positions
past p hold stale keys (an earlier window, or padding of a shorter prompt in a batched prefill); they are
masked, and overwritten before they are ever needed, because each position is written before it is read.
"""

import torch


class KVCache:
    """Keys and values for n_layer layers of batch_size sequences of up to max_len positions each.

    k, v: (n_layer, batch_size, n_head, max_len, head_dim), allocated once.
    """

    def __init__(self, n_layer: int, n_head: int, head_dim: int, batch_size: int, max_len: int, dtype, device):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch_size, self.max_len = batch_size, max_len
        self.layers = [_Layer(self, i) for i in range(n_layer)]
        self.rows = self.row_index = self.positions = self.last = self.mask = None
        self.length = 0

    def fits(self, batch_size: int, max_len: int, dtype, device) -> bool:
        return (batch_size <= self.batch_size and max_len <= self.max_len and dtype == self.k.dtype
                and torch.device(device) == self.k.device)

    def bind(self, rows: list[int], positions, last, length: int):
        """Sets up the next forward for the sequences in cache rows `rows`.

        positions (len(rows), T) long, on the cache's device: each input token's position in its sequence.
        last (len(rows),) long: the input column whose logits each row needs.
        length: 1 + the largest position; attention reads keys 0..length-1 only.
        """
        device = self.k.device
        self.positions, self.last, self.length = positions, last, length
        # the common case (every row from 0, in order) slices the cache instead of gathering it
        index = torch.tensor(rows, device=device)
        self.rows = slice(0, len(rows)) if rows == list(range(len(rows))) else index
        self.row_index = index[:, None]
        keys = torch.arange(length, device=device)
        self.mask = (keys <= positions[:, :, None]).unsqueeze(1)  # (B, 1, T, length)
        return self


class _Layer:
    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def update(self, k, v):
        """k, v (B, nh, T, hs) -> every key and value (B, nh, length, hs) of those rows, and the mask."""
        c = self.cache
        ks, vs = c.k[self.index], c.v[self.index]  # (batch_size, nh, max_len, hs)
        # advanced indices on dims 0 and 2 put their broadcast shape (B, T) first: the values go in as (B, T, nh, hs)
        ks[c.row_index, :, c.positions] = k.transpose(1, 2)
        vs[c.row_index, :, c.positions] = v.transpose(1, 2)
        return ks[c.rows, :, :c.length], vs[c.rows, :, :c.length], c.mask
