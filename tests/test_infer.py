"""The generation engine (gptcore.infer): batches of prompts of different lengths against a full recompute and
transformers' GPT-2, independence of runs and engines, stop strings, seeds, streaming text, cancellation."""

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import transformers

from gptcore import GPT, GPTConfig, GPTCoreError, Generator
from gptcore.infer import Event, Request
from gptcore.infer.text import TextStream
from gptcore.tokenizer import CharTokenizer, get_tokenizer

from test_generate import tiny_model  # the same random model the generation tests use

ROOT = Path(__file__).resolve().parents[1]
CHARS = "abcdefghijklmnopqrstuvwxyz ,.\n"


def window_greedy(forward, ids, n, block):
    """Greedy by full recompute of one sequence under the documented window policy: at most block tokens; a longer
    prompt keeps its last block; a token that doesn't fit restarts the context from the last block // 2."""
    seq, start = list(ids), max(0, len(ids) - block)
    for _ in range(n):
        if len(seq) - start > block:
            start = len(seq) - block // 2
        with torch.no_grad():
            logits = forward(torch.tensor([seq[start:]]))
        seq.append(int(logits[0, -1].argmax()))
    return seq


PROMPTS = [[5], [1, 2, 3], list(range(10, 19)), list(range(30, 46)), [7] * 3 + list(range(20, 45))]  # 1..28 tokens


def test_batch_of_different_lengths_matches_recompute_and_transformers_past_block_size(tmp_path):
    model = tiny_model()
    model.save_pretrained(str(tmp_path))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    n = 40  # block_size 16: every row restarts its window at least twice
    out = Generator(model, dtype="float32").generate(PROMPTS, n, do_sample=False)
    for prompt, got in zip(PROMPTS, out):
        ours = window_greedy(lambda x: model(x)[0], prompt, n, 16)
        theirs = window_greedy(lambda x: hf(x).logits, prompt, n, 16)
        assert got == ours == theirs
        assert len(set(got[len(prompt):])) > 8  # a varied continuation: a wrong context would show


def test_greedy_tokens_do_not_depend_on_the_rest_of_the_batch():
    engine = Generator(tiny_model(), dtype="float32")
    batched = engine.generate(PROMPTS, 20, do_sample=False)
    assert batched == [engine.generate([p], 20, do_sample=False)[0] for p in PROMPTS]


def test_seeded_samples_do_not_depend_on_the_rest_of_the_batch():
    engine = Generator(tiny_model(dtype=torch.float64), dtype="float64")
    kw = dict(temperature=1.2, top_k=30, top_p=0.9)
    alone = list(engine.run([Request([1, 2, 3], 25, seed=11, **kw)]))
    mixed = list(engine.run([Request([9] * 7, 10, seed=3), Request([1, 2, 3], 25, seed=11, **kw),
                             Request([4], 30, do_sample=False)]))
    tokens = lambda steps, i: [e.token for es in steps for e in es if e.index == i]  # noqa: E731
    assert tokens(alone, 0) == tokens(mixed, 1)
    other = list(engine.run([Request([1, 2, 3], 25, seed=12, **kw)]))
    assert tokens(other, 0) != tokens(alone, 0)


def test_n_samples_are_repeated_requests_with_their_own_seeds():
    engine = Generator(tiny_model(), dtype="float32")
    out = engine.generate([[1, 2]] * 4, 20, seed=100)  # row i draws with seed 100 + i
    assert len({tuple(o) for o in out}) == 4
    assert out[2] == engine.generate([[1, 2]], 20, seed=102)[0]


def test_two_interleaved_runs_on_one_engine_do_not_disturb_each_other():
    engine = Generator(tiny_model(), dtype="float32")
    a_alone = engine.generate([PROMPTS[1]], 30, do_sample=False)[0]
    b_alone = engine.generate([PROMPTS[4], PROMPTS[0]], 30, do_sample=False)
    run_a = engine.run([Request(PROMPTS[1], 30, do_sample=False)])
    run_b = engine.run([Request(PROMPTS[4], 30, do_sample=False), Request(PROMPTS[0], 30, do_sample=False)])
    a, b = list(PROMPTS[1]), [list(PROMPTS[4]), list(PROMPTS[0])]
    for events_a, events_b in zip(run_a, run_b):  # one step of each, in turn
        a += [e.token for e in events_a]
        for e in events_b:
            b[e.index].append(e.token)
    assert a == a_alone and b == b_alone


def test_two_engines_on_one_model_do_not_disturb_each_other():
    model = tiny_model()
    fp32, bf16 = Generator(model, dtype="float32"), Generator(model, dtype="bfloat16")
    want32 = fp32.generate(PROMPTS[:3], 25, do_sample=False)
    want16 = bf16.generate(PROMPTS[:3], 25, do_sample=False)
    run32 = fp32.run([Request(p, 25, do_sample=False) for p in PROMPTS[:3]])
    run16 = bf16.run([Request(p, 25, do_sample=False) for p in PROMPTS[:3]])
    got32, got16 = [list(p) for p in PROMPTS[:3]], [list(p) for p in PROMPTS[:3]]
    for e32, e16 in zip(run32, run16):
        for e in e32:
            got32[e.index].append(e.token)
        for e in e16:
            got16[e.index].append(e.token)
    assert got32 == want32 and got16 == want16
    assert next(model.parameters()).dtype == torch.float32  # the bf16 engine converted its own copy


def test_cache_is_allocated_once_and_grows_when_a_call_needs_more():
    engine = Generator(tiny_model(), dtype="float32")
    engine.generate([[1, 2], [3]], 5, do_sample=False)
    (cache,) = engine._caches
    assert cache.batch_size == 2 and cache.max_len == 7
    engine.generate([[4, 5, 6]], 3, do_sample=False)
    assert engine._caches == [cache]  # reused: it fits
    engine.generate([[1]] * 5, 14, do_sample=False)
    (grown,) = engine._caches
    assert grown.batch_size == 5 and grown.max_len == 15


def test_events_finish_once_and_finished_rows_stop_computing():
    tok = CharTokenizer(CHARS)
    model = tiny_model(vocab_size=tok.n_vocab)
    engine = Generator(model, tok, dtype="float32")
    free = engine.generate([[1, 2, 3]], 30, do_sample=False, stop_token=None)[0][3:]
    stop = free[4]
    requests = [Request([1, 2, 3], 30, do_sample=False, stop_token=stop), Request([4, 5], 6, do_sample=False)]
    steps = list(engine.run(requests))
    finals = [e for es in steps for e in es if e.finish_reason]
    assert sorted((e.index, e.finish_reason) for e in finals) == [(0, "stop"), (1, "length")]
    for i in range(2):
        events = [e for es in steps for e in es if e.index == i]
        assert events[-1].finish_reason and all(e.finish_reason is None for e in events[:-1])
    row0 = [e.token for es in steps for e in es if e.index == 0]
    assert row0 == free[:free.index(stop) + 1]
    assert len(steps) == max(len(row0), 6)  # no step after the last request finished
    assert all(len(es) == 1 for es in steps[6:])  # the finished request is no longer in the batch


def test_cancelled_request_is_dropped_at_its_next_step():
    engine = Generator(tiny_model(), dtype="float32")
    requests = [Request([1, 2], 50, do_sample=False), Request([3], 50, do_sample=False)]
    run = engine.run(requests)
    next(run)
    requests[0].cancelled = True
    events = next(run)
    assert Event(0, None, "", "cancelled") in events and [e.index for e in events] == [0, 1]
    rest = list(run)
    assert all(e.index == 1 for es in rest for e in es)
    assert len(rest) == 48


def test_cancelling_from_another_thread():
    engine = Generator(tiny_model(), dtype="float32")
    request = Request([1, 2], 1000, do_sample=False)
    seen = []
    for events in engine.run([request]):
        seen += events
        if len(seen) == 3:
            threading.Thread(target=setattr, args=(request, "cancelled", True)).start()
    assert seen[-1].finish_reason == "cancelled" and len(seen) < 1000


def tokens_by_handle(steps_events):
    """{handle: its tokens} from a list of steps' events; checks each request got exactly one final event, its last."""
    out, finished = {}, set()
    for events in steps_events:
        for e in events:
            assert e.index not in finished
            if e.token is not None:
                out.setdefault(e.index, []).append(e.token)
            if e.finish_reason:
                finished.add(e.index)
    assert set(out) <= finished
    return out, finished


def test_requests_added_mid_run_get_the_tokens_they_get_alone():
    engine = Generator(tiny_model(), dtype="float32")
    n = 40  # block_size 16: windows restart while other rows decode
    kw = dict(temperature=1.2, top_k=30, top_p=0.9)
    joiners = {3: Request(PROMPTS[3], n, do_sample=False), 7: Request(PROMPTS[1], 25, seed=11, **kw),
               35: Request(PROMPTS[4], n, do_sample=False)}  # after the second one's 25 steps
    steps = []
    with engine.batch(rows=3) as batch:
        handles = {batch.add(Request(PROMPTS[0], n, do_sample=False)): PROMPTS[0]}
        for i in range(200):
            if i in joiners:
                handles[batch.add(joiners[i])] = joiners[i]
            if not batch:
                break
            steps.append(batch.step())
            assert len(batch) <= 3
    got, finished = tokens_by_handle(steps)
    assert finished == set(handles) == {0, 1, 2, 3}
    assert got[0] == engine.generate([PROMPTS[0]], n, do_sample=False)[0][1:]
    assert got[1] == engine.generate([PROMPTS[3]], n, do_sample=False)[0][len(PROMPTS[3]):]
    assert got[2] == engine.generate([PROMPTS[1]], 25, seed=11, **kw)[0][len(PROMPTS[1]):]
    assert got[3] == engine.generate([PROMPTS[4]], n, do_sample=False)[0][len(PROMPTS[4]):]
    assert any(len(events) == 3 for events in steps)  # the joiners did share steps with the first request


def test_a_finished_request_frees_its_row_for_the_next_one():
    engine = Generator(tiny_model(), dtype="float32")
    with engine.batch(rows=2) as batch:
        cache = batch.cache
        batch.add(Request(PROMPTS[2], 3, do_sample=False))
        batch.add(Request(PROMPTS[4], 30, do_sample=False))
        assert batch.free == 0
        with pytest.raises(GPTCoreError, match="rows"):
            batch.add(Request([1], 5))
        steps = [batch.step() for _ in range(3)]
        assert len(batch) == 1 and batch.free == 1  # the 3-token request is done
        late = Request(PROMPTS[1], 25, do_sample=False)
        assert batch.add(late) == 2  # in the row the first request held: its stale keys must not leak in
        while batch:
            steps.append(batch.step())
    got, finished = tokens_by_handle(steps)
    assert finished == {0, 1, 2}
    assert got[2] == engine.generate([PROMPTS[1]], 25, do_sample=False)[0][len(PROMPTS[1]):]
    assert got[1] == engine.generate([PROMPTS[4]], 30, do_sample=False)[0][len(PROMPTS[4]):]
    assert cache.batch_size == 2 and engine._caches == [cache]  # three requests in two rows, cache given back
    with pytest.raises(GPTCoreError, match="closed"):
        batch.add(Request([1], 5))


def test_a_cancelled_request_frees_its_row_at_the_next_step():
    engine = Generator(tiny_model(), dtype="float32")
    with engine.batch(rows=1) as batch:
        first = Request(PROMPTS[0], 50, do_sample=False)
        batch.add(first)
        steps = [batch.step(), batch.step()]
        first.cancelled = True
        assert batch.free == 1
        second = batch.add(Request(PROMPTS[3], 20, do_sample=False))
        steps.append(batch.step())
        assert steps[-1][0] == Event(0, None, "", "cancelled") and [e.index for e in steps[-1]] == [0, second]
        while batch:
            steps.append(batch.step())
    got, finished = tokens_by_handle(steps)
    assert finished == {0, 1} and len(got[0]) == 2
    assert got[1] == engine.generate([PROMPTS[3]], 20, do_sample=False)[0][len(PROMPTS[3]):]


def test_a_batch_checks_requests_when_they_are_added():
    engine = Generator(tiny_model(), dtype="float32")
    with engine.batch(rows=2, max_len=8) as batch:
        with pytest.raises(GPTCoreError, match="max_len"):
            batch.add(Request([1, 2, 3], 6))  # 3 + 6 positions > 8
        with pytest.raises(GPTCoreError, match="temperature"):
            batch.add(Request([1], 5, temperature=-1))
        assert batch.free == 2 and not batch and batch.step() == []
    with pytest.raises(GPTCoreError, match="rows"):
        engine.batch(rows=0)


def test_stop_strings_end_the_text_and_are_not_emitted():
    tok = CharTokenizer(CHARS)
    model = tiny_model(vocab_size=tok.n_vocab, block_size=32)
    engine = Generator(model, tok, dtype="float32")
    ids = tok.encode("the ")
    free = tok.decode(engine.generate([ids], 40, do_sample=False, stop_token=None)[0][len(ids):])
    stop = free[10:13]
    want = free[:free.index(stop)]
    assert "<|endoftext|>" not in free[:13] and len(want) >= 5
    pieces = list(engine.stream("the ", 40, do_sample=False, stop=[stop, "zzzz"], stop_token=None))
    assert "".join(pieces) == want
    events = [e for es in engine.run([Request(ids, 40, do_sample=False, stop=[stop], stop_token=None)]) for e in es]
    assert events[-1].finish_reason == "stop" and "".join(e.text for e in events) == want


def test_text_stream_holds_back_a_possible_stop_string_and_split_characters():
    tok = get_tokenizer("gpt2")
    text = "Héllo wörld: 你好，世界 🙂🚀 END naïve café"
    ids = tok.encode(text)
    stream = TextStream(tok, stop=["END", "wörlx"])
    out, stopped = [], False
    for i in ids:
        piece, stopped = stream.push(i)
        assert "\ufffd" not in piece
        out.append(piece)
        if stopped:
            break
        assert not "".join(out).endswith(("E", "EN", "w", "wö", "wör", "wörl"))  # those could start a stop string
    assert stopped and "".join(out) == text[:text.index("END")]
    stream = TextStream(tok, stop=["wörlx"])
    out = [stream.push(i)[0] for i in ids] + [stream.flush()]
    assert "".join(out) == text and len([p for p in out if p]) > 5


def test_stream_yields_text_and_bad_requests_raise_one_line_errors():
    tok = get_tokenizer("gpt2")
    model = GPT(GPTConfig(block_size=32, n_layer=1, n_head=2, n_embd=32))
    engine = Generator(model, tok, dtype="float32")
    pieces = list(engine.stream("Hello", 10, seed=0, stop_token=None))
    assert "".join(pieces) == tok.decode(engine.generate([tok.encode("Hello")], 10, seed=0, stop_token=None)[0][1:])
    for request, message in [(Request([], 5), "ids"), (Request([1, 50257], 5), "ids"),
                             (Request([1], 0), "max_new_tokens"), (Request([1], 5, temperature=-1), "temperature"),
                             (Request([1], 5, top_p=0), "top_p"), (Request([1], 5, top_k=0), "top_k"),
                             (Request([1], 5, seed=1.5), "seed"), (Request([1], 5, stop="END"), "stop"),
                             (Request([1], 5, stop_token=50257), "stop_token")]:
        with pytest.raises(GPTCoreError, match=message) as err:
            engine.run([request])  # checked at the call, before any step
        assert "\n" not in str(err.value)
    with pytest.raises(GPTCoreError, match="tokenizer"):
        Generator(model, dtype="float32").run([Request([1], 5, stop=["x"])])
    with pytest.raises(GPTCoreError, match="quantize"):
        Generator(model, quantize="int4")


def test_the_engine_does_not_import_the_model():
    # gptcore/__init__.py imports everything, so the package is set up bare: only what infer imports gets loaded
    code = ("import sys, types; pkg = types.ModuleType('gptcore'); pkg.__path__ = ['gptcore']; "
            "sys.modules['gptcore'] = pkg; import gptcore.infer, gptcore.infer.engine; "
            "assert 'gptcore.model' not in sys.modules, sorted(m for m in sys.modules if m.startswith('gptcore'))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
