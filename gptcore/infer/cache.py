"""The KV cache the generation engine holds to the model: preallocated once, reused across calls.

The model's forward(idx, cache=cache) reads three things from it and calls one method per layer:
  cache.positions  (B, T) long: the position of each input token in its own sequence (rows may differ);
  cache.last       (B,) long, or None: which input column's logits to return per row (None: the last column);
  cache.layers[i].update(k, v) -> (keys, values, mask, is_causal): writes layer i's new keys and values
                   (B, nh, T, hs) at their positions and returns what the queries attend to, as arguments of
                   F.scaled_dot_product_attention: keys and values (B, nh, L, hs), and a boolean mask (B, 1, T, L)
                   or None with is_causal saying whether attention is causal over exactly these T keys.
The engine sets these before each forward with bind(). The model imports nothing from here (duck typing).

Rows are independent sequences: a query at position p sees its own row's keys at positions 0..p. Positions
past p hold stale keys (an earlier window, or another request's); they are masked, and overwritten before they
are ever needed, because each position is written before it is read.

Speed. A decode step is bound by reading weights, so the cache must add little per layer. Keys are stored
position-major, (max_len, n_embd) per row, so a new token's key is one row written with index_copy_, and the
attention kernel reads them through a transposed view. The two common steps need no mask, which lets
scaled_dot_product_attention take its fastest path: a prefill of equal-length prompts from position 0 is plain
causal attention over its own keys, and a decode step where every row is at the same position sees every key.
"""

import torch


class KVCache:
    """Keys and values for n_layer layers of batch_size sequences of up to max_len positions each.

    k, v: (n_layer, batch_size, max_len, n_head * head_dim), allocated once.
    """

    def __init__(self, n_layer: int, n_head: int, head_dim: int, batch_size: int, max_len: int, dtype, device):
        shape = (n_layer, batch_size, max_len, n_head * head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.batch_size, self.max_len = batch_size, max_len
        self.layers = [_Layer(self, i) for i in range(n_layer)]
        self.rows = self.positions = self.last = self.mask = self.write = self.source = None
        self.length, self.fresh = 0, False

    def fits(self, batch_size: int, max_len: int, dtype, device) -> bool:
        return (batch_size <= self.batch_size and max_len <= self.max_len and dtype == self.k.dtype
                and torch.device(device) == self.k.device)

    def bind(self, rows: list[int], starts: list[int], counts: list[int]):
        """Sets up the next forward: input row b holds counts[b] new tokens (right-padded to T = max(counts)) of
        the sequence in cache row rows[b], at positions starts[b], starts[b] + 1, ...; returns self."""
        device = self.k.device
        T = max(counts)
        self.length = max(s + n for s, n in zip(starts, counts))  # attention reads keys 0..length-1 only
        padded = any(n != T for n in counts)
        start = torch.tensor(starts, device=device)
        # padding sits past each row's own tokens: its positions are clamped into the position table, its keys
        # are never written (below) and no query of a real token sees them
        self.positions = (start[:, None] + torch.arange(T, device=device)).clamp_(max=self.max_len - 1)
        self.last = torch.tensor([n - 1 for n in counts], device=device) if padded else None
        # the common case (rows 0..B-1, in order) slices the cache instead of gathering it
        in_order = rows == list(range(len(rows)))
        row_index = torch.tensor(rows, device=device)
        self.rows = slice(0, len(rows)) if in_order else row_index
        # where each real token's key goes in a layer's (batch_size * max_len, C) view, and (with padding) which
        # input tokens are real
        self.write = (row_index[:, None] * self.max_len + self.positions).view(-1)
        self.source = None
        if padded:
            real = [b * T + t for b, n in enumerate(counts) for t in range(n)]
            self.source = torch.tensor(real, device=device)
            self.write = self.write[self.source]
        # fresh: every row starts at 0 with T tokens, so attention is causal over the new keys alone;
        # a decode step with every row at length - 1 sees every cached key: neither needs a mask
        self.fresh = not padded and all(s == 0 for s in starts)
        sees_all = T == 1 and all(s == self.length - 1 for s in starts)
        self.mask = None
        if not self.fresh and not sees_all:
            keys = torch.arange(self.length, device=device)
            self.mask = (keys <= self.positions[:, :, None]).unsqueeze(1)  # (B, 1, T, length)
        return self


class _Layer:
    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def update(self, k, v):
        """k, v (B, nh, T, hs) -> (keys, values (B, nh, L, hs), mask (B, 1, T, L) or None, is_causal)."""
        c = self.cache
        B, nh, T, hs = k.shape
        stores = c.k[self.index], c.v[self.index]  # (batch_size, max_len, C) each
        for new, store in zip((k, v), stores):
            tokens = new.transpose(1, 2).reshape(B * T, nh * hs)  # a view when new is a column slice of c_attn's output
            if c.source is not None:
                tokens = tokens[c.source]
            store.view(-1, nh * hs).index_copy_(0, c.write, tokens)
        if c.fresh:
            return k, v, None, True
        keys, values = (store[c.rows, :c.length].view(B, c.length, nh, hs).transpose(1, 2) for store in stores)
        return keys, values, c.mask, False
