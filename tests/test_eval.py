"""eval.py and gptcore/eval against an independent computation with transformers.GPT2LMHeadModel.

The model is a small random GPT-2 (64 positions, GPT-2's 50,257-token vocabulary) exported by our save_pretrained;
transformers loads that folder and scores the same texts one example at a time, tokenized by its own GPT-2
tokenizer (built from OpenAI's encoder.json / vocab.bpe), without any gptcore scoring code. Scores are
log-likelihoods in float64 from float32 logits; they must agree within 1e-5, with identical predictions.
"""

import hashlib
import importlib.util
import os
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from gptcore import GPT, GPTConfig, GPTCoreError
from gptcore.checkpoint import model_checkpoint, save_checkpoint
from gptcore.eval.perplexity import windows
from gptcore.eval.scoring import score_requests
from gptcore.tokenizer import CharTokenizer, get_tokenizer, gpt2_bpe_files

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
eval_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eval_script)

BLOCK = 64
LIMITS = {"hellaswag": 16, "lambada": 24, "wikitext2": 8}  # examples; wikitext2: windows (8 * 32 tokens)
TOL = 1e-5


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random GPT-2 exported by gptcore; weights spread wide enough that predictions vary between examples."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def hf(hf_dir):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast
    encoder_json, vocab_bpe = gpt2_bpe_files()
    return GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval(), GPT2TokenizerFast(encoder_json, vocab_bpe)


@pytest.fixture(scope="module")
def ours(hf_dir, tmp_path_factory):
    """eval.py's JSON (with per-example samples) for the exported model on all three tasks, limited."""
    out = tmp_path_factory.mktemp("out") / "results.json"
    results = {}
    for task, limit in LIMITS.items():
        eval_script.main(["--pretrained", str(hf_dir), "--tasks", task, "--limit", str(limit), "--batch-size", "5",
                          "--device", "cpu", "--out", str(out), "--log-samples"])
        report = json.loads(out.read_text())
        results[task] = (report["results"][task], report["samples"][task])
    return results


@torch.no_grad()
def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log P(ids[i] | ids[:i]) for i = 1..len(ids)-1, one sequence, float64."""
    logits = model(torch.tensor([ids[:-1]])).logits[0].double()
    return F.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


@torch.no_grad()
def hf_continuation(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """(sum log P(continuation | context), greedy gets all of it), keeping the last BLOCK + 1 tokens."""
    full = (context + continuation)[-(BLOCK + 1):]
    logits = model(torch.tensor([full[:-1]])).logits[0].double()[-len(continuation):]
    target = torch.tensor(continuation)
    logprob = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum().item()
    return logprob, bool((logits.argmax(-1) == target).all())


def jsonl(name, limit):
    with open(DATA / name) as f:
        return [json.loads(next(f)) for _ in range(limit)]


def test_hellaswag_matches_transformers(hf, ours):
    model, tok = hf
    metrics, samples = ours["hellaswag"]
    items = jsonl("hellaswag_val.jsonl", LIMITS["hellaswag"])
    assert len(samples) == len(items)
    acc, acc_norm = [], []
    for item, sample in zip(items, samples):
        ctx = tok.encode(item["ctx"])
        sums, means = [], []
        for ending in item["endings"]:
            cont = tok.encode(" " + ending)
            logprob, _ = hf_continuation(model, ctx, cont)
            sums.append(logprob)
            means.append(logprob / len(cont))
        # sums of ~20 token log-probs near -200: each term carries the last-bit differences of two fp32
        # implementations, so the sum's tolerance is relative (fp32's spacing at 200 is already 1.5e-5 > TOL)
        assert sample["sum_logprob"] == pytest.approx(sums, rel=1e-6, abs=TOL)
        assert sample["pred"] == max(range(4), key=lambda i: sums[i])
        assert sample["pred_norm"] == max(range(4), key=lambda i: means[i])
        acc.append(sample["pred"] == item["label"])
        acc_norm.append(sample["pred_norm"] == item["label"])
    assert len({s["pred"] for s in samples}) > 1  # the model's choices vary, so equal predictions mean something
    assert metrics["acc"] == pytest.approx(sum(acc) / len(acc))
    assert metrics["acc_norm"] == pytest.approx(sum(acc_norm) / len(acc_norm))


def test_lambada_matches_transformers(hf, ours):
    model, tok = hf
    metrics, samples = ours["lambada"]
    items = jsonl("lambada_openai.jsonl", LIMITS["lambada"])
    nll, hits = [], []
    for item, sample in zip(items, samples):
        words = item["text"].split(" ")
        logprob, greedy = hf_continuation(model, tok.encode(" ".join(words[:-1])), tok.encode(" " + words[-1]))
        assert sample["logprob"] == pytest.approx(logprob, abs=TOL)
        assert sample["greedy"] == greedy
        nll.append(-logprob)
        hits.append(greedy)
    assert metrics["acc"] == pytest.approx(sum(hits) / len(hits))
    assert metrics["ppl"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)


def test_wikitext2_matches_transformers(hf, ours):
    """The reference slides a window of BLOCK input tokens whose end moves by `stride`, and keeps each token's
    first score: written from the protocol, not from gptcore's windows()."""
    model, tok = hf
    metrics, samples = ours["wikitext2"]
    text = (DATA / "wikitext2_test.txt").read_text(encoding="utf-8")
    ids = tok.encode(text[:20_000])  # more than the limited windows read
    stride, scored, end = BLOCK // 2, {}, BLOCK
    for _ in range(LIMITS["wikitext2"]):
        begin = end - BLOCK
        for j, lp in zip(range(begin + 1, end + 1), hf_logprobs(model, ids[begin:end + 1]).tolist()):
            scored.setdefault(j, lp)  # the first window that scores a token gives it the most context it gets
        end += stride
    assert sorted(scored) == list(range(1, len(scored) + 1))  # every token but the first, once
    for sample in samples:
        want = sum(scored[j] for j in range(sample["first"], sample["end"]))
        assert sample["logprob"] == pytest.approx(want, abs=TOL)
    nll = -sum(scored.values())
    covered = tok.decode(ids[:len(scored) + 1])
    assert metrics["token_ppl"] == pytest.approx(math.exp(nll / len(scored)), rel=1e-6)
    assert metrics["word_ppl"] == pytest.approx(math.exp(nll / len(re.split(r"\s+", covered))), rel=1e-6)
    assert metrics["bpb"] == pytest.approx(nll / len(covered.encode()) / math.log(2), rel=1e-6)


def test_scoring_core_greedy_and_padding(hf, hf_dir):
    """Continuations the model itself would pick greedily come back greedy; batches of mixed lengths (right
    padding) give each request the score it gets alone; contexts longer than the window are left-truncated."""
    model, _ = hf
    ours = GPT.from_pretrained(str(hf_dir)).eval()
    g = torch.Generator().manual_seed(1)
    reqs = []
    for n in (3, 10, 40, 80):
        ctx = torch.randint(0, 50257, (n,), generator=g).tolist()
        greedy = model.generate(torch.tensor([ctx[-(BLOCK - 4):]]), max_new_tokens=5, do_sample=False,
                                pad_token_id=0)[0, -5:].tolist()
        reqs += [(ctx, greedy), (ctx, greedy[:2] + [(greedy[2] + 1) % 50257] + greedy[3:])]
    scores = score_requests(ours, reqs, batch_size=3, progress=False)
    for (ctx, cont), score in zip(reqs, scores):
        logprob, greedy = hf_continuation(model, ctx, cont)
        assert score.logprob == pytest.approx(logprob, abs=TOL)
        assert score.greedy == greedy and score.n_tokens == len(cont)
    assert [s.greedy for s in scores] == [True, False] * 4


def test_windows_score_every_token_once():
    for n, block, stride in [(2, 4, 2), (10, 4, 2), (11, 4, 4), (100, 16, 5), (17, 16, 16), (5, 16, 8)]:
        spans = windows(n, block, stride)
        scored = [j for _, first, end in spans for j in range(first, end)]
        assert scored == list(range(1, n))
        for begin, first, end in spans:
            assert end - 1 - begin <= block and (begin == 0 or end - 1 - begin == block)


def test_bf16_is_close(hf_dir):
    model = GPT.from_pretrained(str(hf_dir)).eval()
    g = torch.Generator().manual_seed(2)
    reqs = [(torch.randint(0, 50257, (20,), generator=g).tolist(), [5, 6, 7]) for _ in range(4)]
    fp32 = score_requests(model, reqs, progress=False)
    bf16 = score_requests(model, reqs, dtype=torch.bfloat16, progress=False)
    assert [b.logprob for b in bf16] == pytest.approx([f.logprob for f in fp32], rel=0.05)


def test_says_what_it_evaluates_and_where_the_results_went(hf_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    eval_script.main(["--pretrained", str(hf_dir), "--tasks", "lambada,wikitext2", "--limit", "2", "--device", "cpu",
                      "--out", str(out)])
    assert capsys.readouterr().err.splitlines() == [
        f"evaluating {hf_dir} on cpu, float32: lambada, wikitext2, the first 2 examples (--limit all: every one)",
        f"wrote {out}"]
    assert set(json.loads(out.read_text())["results"]) == {"lambada", "wikitext2"}


# ---- bad input: one line, exit status 2 ----

def run_eval(*argv):
    return subprocess.run([sys.executable, str(ROOT / "eval.py"), *argv], capture_output=True, text=True, cwd=ROOT)


def test_script_error_is_one_line():
    r = run_eval("--tasks", "hellaswag,mmlu")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: unknown task 'mmlu'; known: hellaswag, lambada, wikitext2"]


def test_missing_file_gives_download_hint(tmp_path, hf_dir):
    with pytest.raises(GPTCoreError, match=r"no lambada_openai.jsonl in --data-dir .*download it from https://"):
        eval_script.main(["--pretrained", str(hf_dir), "--tasks", "lambada", "--data-dir", str(tmp_path)])


def test_wrong_sha256_and_malformed_line(tmp_path, hf_dir):
    lines = (DATA / "lambada_openai.jsonl").read_text().splitlines()[:5]
    lines[2] = '{"txt": "no text field"}'
    (tmp_path / "lambada_openai.jsonl").write_text("\n".join(lines) + "\n")
    args = ["--pretrained", str(hf_dir), "--tasks", "lambada", "--data-dir", str(tmp_path), "--device", "cpu"]
    with pytest.raises(GPTCoreError, match=r"has sha256 [0-9a-f]{64}, not the expected 4aa8d02c.*--skip-checksum"):
        eval_script.main(args)
    with pytest.raises(GPTCoreError, match=r"lambada_openai.jsonl line 3 needs 'text'"):
        eval_script.main(args + ["--skip-checksum"])
    lines[2] = "{not json"
    (tmp_path / "lambada_openai.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(GPTCoreError, match=r"line 3 is not valid JSON"):
        eval_script.main(args + ["--skip-checksum"])


def test_hellaswag_line_checks(tmp_path, hf_dir):
    item = jsonl("hellaswag_val.jsonl", 1)[0]
    (tmp_path / "hellaswag_val.jsonl").write_text(json.dumps(item) + "\n" + json.dumps({**item, "label": 4}) + "\n")
    with pytest.raises(GPTCoreError, match=r"hellaswag_val.jsonl line 2 needs 'label': 0, 1, 2 or 3"):
        eval_script.main(["--pretrained", str(hf_dir), "--tasks", "hellaswag", "--data-dir", str(tmp_path),
                          "--skip-checksum", "--device", "cpu"])


def test_non_gpt2_tokenizer_is_refused_for_hellaswag_and_lambada(tmp_path):
    tok = CharTokenizer("abc ")
    model = GPT(GPTConfig(block_size=16, vocab_size=tok.n_vocab, n_layer=1, n_head=1, n_embd=8))
    save_checkpoint(str(tmp_path / "char.pt"), model_checkpoint(model, tok, step=0))
    for task in ("hellaswag", "lambada"):
        with pytest.raises(GPTCoreError, match=f"{task} needs a model with the GPT-2 BPE tokenizer, but this one "
                                               "uses a 'char' tokenizer"):
            eval_script.main(["--checkpoint", str(tmp_path / "char.pt"), "--tasks", task, "--device", "cpu"])


def test_download_is_checked_before_it_is_kept(tmp_path, monkeypatch):
    """Online, a file is fetched into the cache once (here from file:// URLs); a download with the wrong digest is
    not kept; HellaSwag's raw file, which has no published sha256, is accepted by its git blob id."""
    import dataclasses

    from gptcore.eval import files
    source = tmp_path / "served"
    source.mkdir()
    (source / "wikitext2_test.txt").write_bytes((DATA / "wikitext2_test.txt").read_bytes())
    (source / "lambada_openai.jsonl").write_bytes(b"tampered")
    raw = b'{"ctx": "raw"}\n'  # stands for the raw HellaSwag file; its git blob id is computed here, the git way
    (source / "hellaswag_val.jsonl").write_bytes(raw)
    blob = hashlib.sha1(b"blob %d\0" % len(raw) + raw).hexdigest()
    for task, spec in files.FILES.items():
        url = (source / spec.name).as_uri()
        extra = {"git_blob": blob} if task == "hellaswag" else {}
        monkeypatch.setitem(files.FILES, task, dataclasses.replace(spec, url=url, **extra))
    monkeypatch.setattr(files, "SHARED_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    path = files.task_file("wikitext2")
    assert Path(path).read_bytes() == (DATA / "wikitext2_test.txt").read_bytes()
    (source / "wikitext2_test.txt").unlink()
    assert files.task_file("wikitext2") == path  # the cached copy: nothing fetched again
    with pytest.raises(GPTCoreError, match=r"the download from file://.* has sha256 .* nothing was saved; offline"):
        files.task_file("lambada")
    assert not (tmp_path / "cache" / "eval" / "lambada_openai.jsonl").exists()
    assert Path(files.task_file("hellaswag")).read_bytes() == raw


def test_hellaswag_callback_matches_eval(hf_dir, ours):
    from gptcore.eval.callback import HellaSwagCallback
    model = GPT.from_pretrained(str(hf_dir)).eval()
    callback = HellaSwagCallback(get_tokenizer("gpt2"), interval=5, limit=LIMITS["hellaswag"], batch_size=7)
    assert [callback.due(s, 12) for s in (4, 5, 10, 11, 12)] == [False, True, True, False, True]
    metrics = callback(model)
    assert metrics == {"hellaswag_acc": ours["hellaswag"][0]["acc"], "hellaswag_acc_norm": ours["hellaswag"][0]["acc_norm"]}


DDP_SCRIPT = """
import json, sys, torch
from gptcore import GPT
from gptcore.eval.scoring import score_requests
from gptcore.train.distributed import destroy_distributed, init_distributed
d = init_distributed("cpu")
model = GPT.from_pretrained(sys.argv[1]).eval()
g = torch.Generator().manual_seed(3)
reqs = [(torch.randint(0, 50257, (int(n),), generator=g).tolist(), [1, 2, 3][:1 + n % 3]) for n in range(2, 13)]
scores = score_requests(model, reqs, batch_size=2, progress=False, dist=d)
json.dump([[s.logprob, s.n_tokens, s.greedy] for s in scores], open(sys.argv[2] + str(d.rank), "w"))
destroy_distributed()
"""


def test_ddp_ranks_share_the_work_and_all_get_every_score(tmp_path, hf_dir, hf):
    """2 processes (gloo): each scores half the requests; both return all scores, equal to transformers'."""
    script = tmp_path / "ddp_score.py"
    script.write_text(DDP_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script),
                        str(hf_dir), str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    rank0, rank1 = (json.loads((tmp_path / f"out{k}").read_text()) for k in (0, 1))
    assert rank0 == rank1 and len(rank0) == 11
    g = torch.Generator().manual_seed(3)
    for n, (logprob, n_tokens, greedy) in zip(range(2, 13), rank0):
        ctx, cont = torch.randint(0, 50257, (n,), generator=g).tolist(), [1, 2, 3][:1 + n % 3]
        want, want_greedy = hf_continuation(hf[0], ctx, cont)
        assert logprob == pytest.approx(want, abs=TOL) and n_tokens == len(cont) and greedy == want_greedy


def test_loss_plot_gets_a_hellaswag_panel(tmp_path):
    from gptcore.plot import loss_figure, plot_losses
    records = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 7)]
    assert len(loss_figure(records).axes) == 1
    records[2].update(hellaswag_acc=0.25, hellaswag_acc_norm=0.27)
    records[5].update(hellaswag_acc=0.26, hellaswag_acc_norm=0.3, val_loss=4.5)
    fig = loss_figure(records)
    assert len(fig.axes) == 2
    acc_norm = fig.axes[1].get_lines()[0]
    assert list(acc_norm.get_xdata()) == [3, 6] and list(acc_norm.get_ydata()) == [0.27, 0.3]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    plot_losses(str(tmp_path / "metrics.jsonl"), str(tmp_path / "loss.png"))
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_logs_hellaswag_and_plots_it(tmp_path):
    """A tiny GPT-2-tokenized run with --hellaswag-interval 2: the records of steps 2 and 4 (and only those) carry
    hellaswag_acc and hellaswag_acc_norm, equal to scoring the saved model at step 4 with eval.py's task code."""
    import numpy as np
    from gptcore.checkpoint import load_checkpoint, model_from_checkpoint
    from gptcore.data import write_meta, write_shard
    from gptcore.eval import hellaswag
    from gptcore.eval.files import task_file
    from gptcore.plot import loss_figure

    tok = get_tokenizer("gpt2")
    ids = np.array(tok.encode((DATA / "tinyshakespeare.txt").read_text()[:20_000]), dtype=np.uint16)
    data = tmp_path / "data"
    write_shard(str(data / "train_000000.bin"), ids[:4000])
    write_shard(str(data / "val_000000.bin"), ids[4000:])
    write_meta(str(data), {"format_version": 1, "tokenizer": tok.describe(), "vocab_size": tok.n_vocab,
                           "train_shards": ["train_000000.bin"], "val_shards": ["val_000000.bin"],
                           "input_hash": "tiny-gpt2"})
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(data), "--out-dir", str(out),
                        "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "64", "--batch-size", "2",
                        "--max-iters", "4", "--warmup-steps", "0", "--eval-interval", "4", "--eval-steps", "1", "--sample-tokens", "0",
                        "--dtype", "float32", "--hellaswag-interval", "2", "--hellaswag-limit", "6"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "hellaswag_acc_norm" in r] == [2, 4]
    model, _ = model_from_checkpoint(load_checkpoint(str(out)))
    want = hellaswag.evaluate(model, tok, task_file("hellaswag"), limit=6, progress=False).metrics
    assert records[-1]["hellaswag_acc_norm"] == want["acc_norm"] and records[-1]["hellaswag_acc"] == want["acc"]
    assert (out / "loss.png").exists() and len(loss_figure(records).axes) == 2


def test_limit_takes_a_count_or_all():
    assert eval_script.parse_args([]).limit == eval_script.DEFAULT_LIMIT
    assert eval_script.parse_args(["--limit", "all"]).limit is None
    assert eval_script.parse_args(["--limit", "7"]).limit == 7
    with pytest.raises(GPTCoreError, match="--limit takes a number >= 1 or 'all', got '0'"):
        eval_script.parse_args(["--limit", "0"])
