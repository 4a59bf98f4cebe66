"""The one scoring core every task uses: log P(continuation | context) under the model, batched.

A request is (context ids, continuation ids), both non-empty lists. The model reads context + continuation minus
its last token, left-truncated to the model's context (block_size) the way lm-evaluation-harness does it: the
last block_size + 1 tokens of context + continuation are kept, so the continuation is always scored whole, with
as much context as fits. Each continuation token is scored by the log-softmax at the position before it.

Batching: requests are sorted by length (longest first, so a batch's padding is small), right-padded, and
run together. Attention is causal, so padding to the right of a row's last real token can't change any score of
that row; the scores are gathered at each row's own positions only. The head (n_embd -> vocab) is applied only
at the gathered positions, and the log-softmax runs in float32 whatever the model's dtype.

Under DDP (a gptcore.train.distributed.Distributed with world_size > 1) each rank scores every world_size-th
request and all ranks get all the scores back.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..errors import GPTCoreError

HEAD_ROWS_CPU = 64


@dataclass
class Score:
    """One request's result: sum of log-probabilities of the continuation tokens (natural log), their count,
    and whether greedy decoding (argmax at each position, given the true prefix; a tie counts as a hit) yields the
    whole continuation."""
    logprob: float
    n_tokens: int
    greedy: bool


def check_requests(requests, block_size: int):
    for i, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise GPTCoreError(f"request {i} has an empty context or continuation; both need at least one token")
        if len(continuation) > block_size:
            raise GPTCoreError(f"request {i} has a continuation of {len(continuation)} tokens, more than the "
                               f"model's context of {block_size}; it can't be scored in one window")


def model_input(context: list[int], continuation: list[int], block_size: int) -> list[int]:
    """The ids the model reads for one request: (context + continuation)[:-1], keeping at most the last
    block_size of them."""
    return (context + continuation)[-(block_size + 1):][:-1]


def autocast_for(device: str, dtype: torch.dtype):
    """bf16 autocast (LayerNorm, softmax stay float32) when dtype is bfloat16, else nothing."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


@torch.no_grad()
def score_batch(model, batch, dtype=torch.float32) -> list[Score]:
    """Scores a list of (context, continuation) requests in one forward pass: (B, T_max) -> B Scores."""
    device = model.transformer.wte.weight.device
    block_size, vocab = model.config.block_size, model.config.vocab_size
    inputs = [model_input(ctx, cont, block_size) for ctx, cont in batch]
    T = max(len(x) for x in inputs)
    idx = torch.zeros(len(batch), T, dtype=torch.long)  # right padding with id 0: causal attention never sees it
    rows, cols, targets = [], [], []
    for b, (x, (_, cont)) in enumerate(zip(inputs, batch)):
        idx[b, :len(x)] = torch.tensor(x)
        n = len(cont)
        rows += [b] * n
        cols += range(len(x) - n, len(x))  # the position before each continuation token
        targets += cont
    targets = torch.tensor(targets, device=device)
    token_lp, hit = [], []
    with autocast_for(device, dtype):
        hidden = model.hidden_states(idx.to(device))  # (B, T, n_embd)
        picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]  # (N, n_embd)
        # on CPUs, a few rows at a time: a (64, vocab) block of logits stays in cache for the passes below
        step = HEAD_ROWS_CPU if device.type == "cpu" else len(targets)
        for i in range(0, len(targets), step):
            logits = F.linear(picked[i:i + step], model.transformer.wte.weight[:vocab]).float()  # the tied head
            chosen = logits.gather(1, targets[i:i + step, None])[:, 0]
            # log-softmax at the targets only; greedy = the target's logit is the largest
            token_lp.append(chosen - torch.logsumexp(logits, dim=-1))
            hit.append(chosen >= logits.max(dim=-1).values)
    token_lp, hit = torch.cat(token_lp).double().cpu(), torch.cat(hit).cpu()  # (N,), (N,)
    scores, start = [], 0
    for _, cont in batch:
        n = len(cont)
        scores.append(Score(float(token_lp[start:start + n].sum()), n, bool(hit[start:start + n].all())))
        start += n
    return scores


def score_requests(model, requests, batch_size: int = 16, dtype=torch.float32, progress: bool = True,
                   desc: str = "scoring", dist=None) -> list[Score]:
    """All requests' Scores, in the order given. With dist (a Distributed of world_size N > 1) each rank scores
    requests rank, rank + N, ...; the results are all-gathered, so every rank returns the full list."""
    check_requests(requests, model.config.block_size)
    if batch_size < 1:
        raise GPTCoreError(f"--batch-size must be >= 1, got {batch_size}")
    distributed = dist is not None and dist.enabled
    rank, world = (dist.rank, dist.world_size) if distributed else (0, 1)
    mine = list(range(rank, len(requests), world))
    # longest first: similar lengths share a batch (little padding), and a too-big batch fails at once
    mine.sort(key=lambda i: -len(model_input(*requests[i], model.config.block_size)))
    was_training = model.training
    model.eval()
    results = {}
    try:
        for start in tqdm(range(0, len(mine), batch_size), total=math.ceil(len(mine) / batch_size), desc=desc,
                          disable=not progress or rank != 0, leave=False):
            chunk = mine[start:start + batch_size]
            for i, score in zip(chunk, score_batch(model, [requests[i] for i in chunk], dtype)):
                results[i] = score
    finally:
        model.train(was_training)
    if distributed:
        for part in dist.all_gather_object(results):
            results.update(part)
    return [results[i] for i in range(len(requests))]
