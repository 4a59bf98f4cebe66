"""model.generate and the sampling maths against independent references: a full recompute written here,
transformers' GPT-2 for greedy tokens, and sampling distributions computed in float64 with numpy.
The engine's own features (requests, streaming, stop strings, int8) are in tests/test_infer.py."""

import copy

import numpy as np
import pytest
import torch
import transformers

from gptcore import GPT, GPTConfig, GPTCoreError
from gptcore.infer.sampling import next_token_probs, sample_next_token
from gptcore.infer.text import decode_stream
from gptcore.tokenizer import CharTokenizer, get_tokenizer
from gptcore.train.loop import configure_optimizer


def tiny_model(dtype=torch.float32, block_size=16, vocab_size=64, seed=0):
    """A random model whose greedy continuations vary: GPT-2's 0.02 init makes them collapse to one repeated token."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.to(dtype).eval()


def generate(model, idx, n, temperature=1.0, **kwargs):
    """model.generate in the model's own dtype (the default may be faster and lossy, e.g. bf16); temperature 0 is
    greedy, anything else samples."""
    dtype = next(model.parameters()).dtype
    return model.generate(idx, n, temperature=temperature, do_sample=temperature > 0, dtype=dtype, **kwargs)


@torch.no_grad()
def reference_greedy(model, idx, n):
    """The documented context policy, recomputed from scratch at every step: at most block_size tokens;
    a longer prompt keeps its last block_size; a token that doesn't fit restarts from the last block_size // 2."""
    block = model.config.block_size
    seq = idx
    start = max(0, idx.size(1) - block)
    for _ in range(n):
        if seq.size(1) - start > block:
            start = seq.size(1) - block // 2
        logits, _ = model(seq[:, start:])
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


def test_greedy_with_cache_equals_full_recompute_past_block_size():
    model = tiny_model()
    idx = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(1))
    n = 60  # block_size 16: the window restarts 7 times
    want = reference_greedy(model, idx, n)
    assert len(set(want[0, 5:].tolist())) > 10  # a varied continuation, so a wrong context would show
    assert torch.equal(generate(model, idx, n, temperature=0), want)


def test_prompt_longer_than_block_size_keeps_its_last_block_size_tokens():
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(2))
    out = generate(model, idx, 30, temperature=0)
    assert out.shape == (2, 70) and torch.equal(out[:, :40], idx)
    assert torch.equal(out, reference_greedy(model, idx, 30))
    assert torch.equal(out[:, 40:], generate(model, idx[:, -16:], 30, temperature=0)[:, 16:])


@torch.no_grad()
def reference_sample(model, idx, n, temperature, top_k, top_p, generator):
    """Sampling by full recompute, one draw per row per step, in row order (as the engine draws)."""
    block = model.config.block_size
    seq, start = idx, 0
    for _ in range(n):
        if seq.size(1) - start > block:
            start = seq.size(1) - block // 2
        logits = model(seq[:, start:])[0][:, -1]
        nxt = torch.cat([sample_next_token(logits[i:i + 1], temperature, top_k, top_p, generator)
                         for i in range(len(seq))])
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq


def test_sampled_tokens_with_cache_equal_full_recompute():
    # float64: the two paths' logits differ by ~1e-16, so the same seeded draws pick the same tokens
    model = tiny_model(torch.float64)
    idx = torch.randint(0, 64, (2, 3), generator=torch.Generator().manual_seed(3))
    kw = dict(temperature=1.3, top_k=40, top_p=0.95)
    a = generate(model, idx, 50, **kw, generator=torch.Generator().manual_seed(7))
    b = reference_sample(model, idx, 50, **kw, generator=torch.Generator().manual_seed(7))
    c = generate(model, idx, 50, **kw, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_batched_prompts_match_one_at_a_time():
    model = tiny_model(torch.float64)
    idx = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(4))
    batched = generate(model, idx, 25, temperature=0)
    for row in range(4):
        assert torch.equal(batched[row:row + 1], generate(model, idx[row:row + 1], 25, temperature=0))


def test_greedy_matches_transformers_gpt2(tmp_path):
    model = tiny_model(block_size=32)
    model.save_pretrained(str(tmp_path))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    seq = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(5))
    ours = generate(model, seq, 28, temperature=0)
    with torch.no_grad():
        for _ in range(28):
            seq = torch.cat([seq, hf(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(ours, seq)


def test_model_generate_delegates_and_restores_state():
    model = tiny_model().train()
    idx = torch.randint(0, 64, (1, 4), generator=torch.Generator().manual_seed(6))
    # float32 as the reference: the default dtype is measured, and on an AMX CPU under load it can come out bf16
    out = model.generate(idx, 12, temperature=0, dtype="float32")
    assert torch.equal(out, reference_greedy(model.eval(), idx, 12))
    model.train()
    model.generate(idx, 3, temperature=0.5, do_sample=True, top_k=5, top_p=0.9, stop_token=None, dtype="float32")
    assert model.training


def test_model_generate_never_uses_stale_weights():
    # the trainer samples between optimizer steps: each call must see the weights as they are now, whatever the
    # generation dtype (a converted copy is rebuilt when a parameter changes in place)
    model = tiny_model()
    idx = torch.randint(0, 64, (2, 4), generator=torch.Generator().manual_seed(6))
    opt = configure_optimizer(model, weight_decay=0.1, learning_rate=0.5)
    for dtype in ("float32", "bfloat16"):
        before = model.generate(idx, 12, dtype=dtype)
        loss = model(idx, idx)[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
        after = model.generate(idx, 12, dtype=dtype)
        assert not torch.equal(before, after)
        fresh = copy.deepcopy(model)  # nothing cached for this one
        assert torch.equal(after, fresh.generate(idx, 12, dtype=dtype))
        model.eval()


def test_stop_token_ends_each_row_and_pads_finished_ones():
    model = tiny_model()
    idx = torch.randint(0, 64, (3, 5), generator=torch.Generator().manual_seed(1))
    free = generate(model, idx, 40, temperature=0)[:, 5:]
    stop = int(free[0, 3])  # row 0 produces it at step 3
    first = [row.tolist().index(stop) if stop in row.tolist() else None for row in free]
    ends = [40 if f is None else f + 1 for f in first]
    out = generate(model, idx, 40, temperature=0, stop_token=stop)[:, 5:]
    assert out.size(1) == max(ends)
    for row, end in enumerate(ends):
        assert torch.equal(out[row, :end], free[row, :end])
        assert (out[row, end:] == stop).all()


def test_zero_new_tokens_returns_the_prompt():
    model = tiny_model()
    idx = torch.tensor([[1, 2, 3]])
    out = generate(model, idx, 0)
    assert torch.equal(out, idx) and out is not idx


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.2), "top_p"),
    (dict(stop_token=64), "stop_token"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens"),
    (dict(dtype="int4"), "dtype"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    model = tiny_model()
    kwargs = {"max_new_tokens": 5, "do_sample": True, **kwargs}
    with pytest.raises(GPTCoreError, match=message) as err:
        model.generate(torch.tensor([[1, 2]]), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("idx", [torch.zeros(1, 0, dtype=torch.long), torch.tensor([1, 2]), torch.tensor([[1.0, 2.0]]),
                                 torch.tensor([[1, 64]])])
def test_bad_prompts_raise(idx):
    with pytest.raises(GPTCoreError, match="idx|ids"):
        generate(tiny_model(), idx, 3)


# ---- sampling semantics on fixed logits ----

LOGITS = np.array([0.3, 2.0, -1.0, 1.2, -4.0, 1.5, 0.0, -0.4, 1.0, -2.5, 0.6, -1.5])  # no ties, shuffled order


def reference_probs(logits, temperature, top_k, top_p):
    """float64: softmax(logits / T); keep the k largest; keep the smallest most-likely set with mass >= p."""
    z = logits / temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_k is not None:
        probs[np.argsort(-probs)[top_k:]] = 0
        probs /= probs.sum()
    if top_p is not None:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        assert np.abs(cum - top_p).min() > 1e-5  # p is not so close to a boundary that float32 could flip it
        n_keep = int(np.searchsorted(cum, top_p)) + 1  # first prefix whose mass reaches top_p
        probs[order[n_keep:]] = 0
        probs /= probs.sum()
    return probs


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, None, None), (0.5, None, None), (2.5, None, None), (1.0, 3, None), (0.7, 1, None),
    (1.0, None, 0.5), (1.0, None, 0.9), (1.8, 6, 0.8), (0.8, 4, 0.6), (1.0, 100, None),
])
def test_sampling_matches_reference_distribution(temperature, top_k, top_p):
    want = reference_probs(LOGITS.copy(), temperature, top_k, top_p)
    logits = torch.tensor(LOGITS, dtype=torch.float32)
    probs = next_token_probs(logits[None], temperature, top_k, top_p)[0].double().numpy()
    assert np.abs(probs - want).max() < 1e-6

    n = 50_000
    draws = sample_next_token(logits.expand(n, -1), temperature, top_k, top_p, torch.Generator().manual_seed(0))
    freq = np.bincount(draws.numpy(), minlength=len(LOGITS)) / n
    assert np.abs(freq - want).max() < 0.01
    assert (freq[want == 0] == 0).all()  # filtered tokens are never drawn


def test_temperature_zero_is_argmax_whatever_top_k_and_top_p():
    logits = torch.randn(8, 100, generator=torch.Generator().manual_seed(0))
    for top_k, top_p in [(None, None), (1, None), (5, 0.1)]:
        assert torch.equal(sample_next_token(logits, 0, top_k, top_p), logits.argmax(-1))


def test_greedy_takes_the_first_of_tied_maxima_in_any_dtype_and_layout():
    logits = torch.zeros(3, 10)
    logits[0, [2, 5]] = 1
    logits[1, [7, 9]] = 2  # row 2: all tied, so token 0
    for x in (logits, logits.bfloat16(), logits.double(), logits.t().contiguous().t()):
        assert sample_next_token(x, 0).tolist() == [2, 7, 0]


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    idx = torch.tensor([[1, 2, 3]])
    a = generate(model, idx, 20, generator=torch.Generator().manual_seed(3))
    b = generate(model, idx, 20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ---- streaming text ----

def test_decode_stream_holds_back_split_characters():
    tok = get_tokenizer("gpt2")
    text = "Héllo wörld: 你好，世界 🙂🚀 naïve café"
    ids = tok.encode(text)
    assert "\ufffd" in "".join(tok.decode([i]) for i in ids)  # some characters really are split across tokens
    pieces = list(decode_stream(tok, iter(ids)))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert len(pieces) > 5  # it streams: not one piece at the end


def test_decode_stream_char_tokenizer():
    tok = CharTokenizer("abc ")
    ids = tok.encode("ab c") + [tok.eot_token]
    assert "".join(decode_stream(tok, ids)) == "ab c<|endoftext|>"
