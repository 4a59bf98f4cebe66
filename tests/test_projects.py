"""minGPT's projects (projects/*), reduced to CI size: each runs end to end and the assertions are on what it learned.

References are independent of the code under test: Python's own arithmetic and sorting, float64 sums computed
position by position, transformers.GPT2LMHeadModel, and the unigram entropy of the data.
"""

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from torch.nn import functional as F

from gptcore import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = ROOT / "projects"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"


def load(name):
    """projects/<name>/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"project_{name}", PROJECTS / name / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# These models are tiny: a second thread gains them nothing, and on a busy 2-core runner two threads that wait on
# each other made a 12 s run take 67 s. One thread for every project process and notebook kernel started here.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(name, *args, check=True):
    """Runs projects/<name>/<name>.py from a directory outside the repo, as a user of a fresh clone would."""
    result = subprocess.run([sys.executable, str(PROJECTS / name / f"{name}.py"), *map(str, args)],
                            capture_output=True, text=True, cwd="/", timeout=600, env=ONE_THREAD)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def summary(out_dir):
    return json.loads((Path(out_dir) / "summary.json").read_text())


def execute_notebook(path, monkeypatch):
    """Runs every cell top to bottom in a fresh kernel (in the notebook's folder, with this process's environment
    and one thread); returns all the text it printed."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel inherits the environment
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


# ------------------------------------------------------------------------------------------------------------ adder

def test_adder_encoding_matches_arithmetic():
    adder = load("adder")
    for ndigit in (1, 2):
        train, test = adder.AdditionDataset(ndigit, "train"), adder.AdditionDataset(ndigit, "test")
        assert len(train) + len(test) == 100 ** ndigit
        seen = {tuple(s.tolist()) for s in train.seqs} | {tuple(s.tolist()) for s in test.seqs}
        assert len(seen) == 100 ** ndigit  # every problem once, in one split or the other
        x, y = test[3]
        digits = "".join(map(str, x.tolist())) + str(y[-1].item())
        a, b = int(digits[:ndigit]), int(digits[ndigit:2 * ndigit])
        assert digits[2 * ndigit:] == str(a + b).zfill(ndigit + 1)[::-1]
        assert (y[:2 * ndigit - 1] == -1).all() and (y[2 * ndigit - 1:] >= 0).all()


def test_adder_learns_one_digit_addition(tmp_path):
    """All 80 training sums learned. The 20 held-out ones are not inferable from so few: a tiny GPT memorizes
    1-digit sums rather than generalizing (about 5% held out after 3,000 steps); 2-digit, with 9,500 training
    problems, does generalize (README)."""
    result = run("adder", "--ndigit", 1, "--max-iters", 2000, "--eval-interval", 100, "--out-dir", tmp_path)
    s = summary(tmp_path)
    assert s["test_problems"] == 20 and s["train_problems"] == 80
    assert s["train_accuracy"] == 1.0
    assert len(s["test_mistakes"]) == round(20 * (1 - s["test_accuracy"]))
    assert f"test accuracy {s['test_accuracy']:.2%}" in result.stdout.splitlines()[-1]


def test_adder_rejects_bad_ndigit(tmp_path):
    result = run("adder", "--ndigit", 5, "--out-dir", tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--ndigit" in result.stderr


# ---------------------------------------------------------------------------------------------------------- chargpt

def test_chargpt_score_counts_every_position_once():
    """score() against a float64 loop that predicts each position from its own context window, one at a time."""
    chargpt = load("chargpt")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # far from uniform predictions, so that a position scored with the wrong context shows
    ids = torch.randint(11, (61,))
    first = 40  # the window tiling starts at 39: windows 39..46, 47..54, 55..59 (short)
    total = 0.0
    for pos in range(first, len(ids)):
        start = first - 1 + (pos - first) // 8 * 8  # the window this position falls in
        logits, _ = model(ids[None, start:pos])
        total -= F.log_softmax(logits[0, -1], dim=-1)[ids[pos]].item()
    # score() takes float32 logits (bf16 models), hence 1e-6 and not float64's precision
    assert chargpt.score(model, ids, first, "cpu", batch_size=2) == pytest.approx(total / (len(ids) - first), rel=1e-6)


def test_chargpt_learns_shakespeare(tmp_path):
    text = SHAKESPEARE.read_text()[:200_000]
    (tmp_path / "in.txt").write_text(text)
    result = run("chargpt", "--input", tmp_path / "in.txt", "--n-layer", 2, "--n-embd", 64, "--batch-size", 16,
                 "--max-iters", 100, "--sample-chars", 50, "--out-dir", tmp_path)
    s = summary(tmp_path)
    val = text[int(0.9 * len(text)):]
    counts = Counter(val)
    unigram = -sum(c / len(val) * math.log(c / len(val)) for c in counts.values())  # nats, with val's own counts
    assert s["val_chars"] == len(val) and s["train_chars"] == len(text) - len(val)
    assert s["val_loss"] < unigram - 0.5, (s["val_loss"], unigram)  # it learned context, not only frequencies
    assert s["val_bpc"] == pytest.approx(s["val_loss"] / math.log(2))
    assert len(s["sample"]) > 50 and "val" in result.stdout.splitlines()[-1]


# ----------------------------------------------------------------------------------------------------------- sorter

def test_sorter_notebook_runs_and_learns(monkeypatch):
    monkeypatch.setenv("SORTER_MAX_ITERS", "150")
    printed = execute_notebook(PROJECTS / "sorter" / "demo.ipynb", monkeypatch)
    accuracy = float(printed.split("accuracy on 1,000 fresh random problems: ")[1].split("%")[0])
    assert accuracy >= 95.0, printed


def test_sorter_problems_and_targets():
    sorter = load("sorter")
    splits = sorter.split_problems()
    everything = {tuple(p.tolist()) for p in torch.cat([splits["train"], splits["test"]])}
    assert len(everything) == 3 ** 6 and len(splits["test"]) == 182
    x, y = sorter.SortDataset(splits["train"])[0]
    problem = x[:6].tolist()
    assert x[6:].tolist() + [y[-1].item()] == sorted(problem)
    assert (y[:5] == -1).all()


# --------------------------------------------------------------------------------------------------------- generate

@pytest.fixture(scope="module")
def random_gpt2(tmp_path_factory):
    """A GPT-2 folder saved by transformers, random weights spread wide enough that greedy choices are clear."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, initializer_range=0.3)).save_pretrained(path)
    return path


def test_generate_script_matches_transformers(random_gpt2, tmp_path):
    result = run("generate", "--pretrained", random_gpt2, "--prompt", "Hello, my dog", "--max-new-tokens", 20,
                 "--out-dir", tmp_path)
    s = summary(tmp_path)
    assert s["same_tokens"] and s["gptcore_text"] == s["transformers_text"]
    assert s["gptcore_text"].startswith("Hello, my dog") and len(s["gptcore_text"]) > len("Hello, my dog")
    assert "agree" in result.stdout.splitlines()[-1]


def test_generate_notebook_runs(random_gpt2, monkeypatch):
    monkeypatch.setenv("GENERATE_PRETRAINED", str(random_gpt2))
    printed = execute_notebook(PROJECTS / "generate" / "generate.ipynb", monkeypatch)
    assert "same tokens: True" in printed, printed


def test_generate_bad_name_fails_in_one_line(tmp_path):
    result = run("generate", "--pretrained", "gpt5", "--out-dir", tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


# --------------------------------------------------------------------------------------------------------- finetune

def test_finetune_committed_checkpoint_on_shakespeare(tmp_path):
    text = SHAKESPEARE.read_text()[:40_000]
    (tmp_path / "in.txt").write_text(text)
    result = run("finetune", "--input", tmp_path / "in.txt", "--max-iters", 20, "--batch-size", 4,
                 "--sample-tokens", 10, "--out-dir", tmp_path)
    s = summary(tmp_path)
    assert s["val_loss_after"] < s["val_loss_before"] - 1.0, (s["val_loss_before"], s["val_loss_after"])
    assert s["sample_before"] != s["sample_after"]
    assert (tmp_path / "finetuned.pt").exists() and "finetune" in result.stdout.splitlines()[-1]


def test_finetune_val_loss_before_matches_transformers(tmp_path):
    """The checkpoint's val loss on one window, via gptcore's score() and via transformers on the same weights."""
    from transformers import GPT2LMHeadModel
    chargpt = load("chargpt")
    finetune = load("finetune")
    model, tokenizer = finetune.load_model(str(ROOT / "checkpoint" / "quickstart.pt"))
    model.float()
    ids = torch.tensor(tokenizer.encode(SHAKESPEARE.read_text()[:2000]))
    first = len(ids) - 100  # 100 targets: one window of 128 covers them
    ours = chargpt.score(model, ids, first, "cpu")
    model.save_pretrained(str(tmp_path / "hf"))
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        logits = hf(ids[None, first - 1:-1]).logits[0].double()
    reference = F.cross_entropy(logits, ids[first:]).item()
    assert ours == pytest.approx(reference, abs=1e-4)


# ------------------------------------------------------------------------------------------------------------ text8

def test_text8_end_to_end_on_a_generated_file(tmp_path):
    """A text in text8's alphabet with structure to learn: words from a small lexicon, in a fixed cycle of lengths."""
    rng = random.Random(0)
    words = ["the", "of", "and", "one", "zero", "nine", "in", "a", "to", "is", "was", "american", "history"]
    text = " ".join(rng.choice(words) for _ in range(30_000))[:120_000]
    (tmp_path / "t8.txt").write_text(text)
    result = run("text8", "--input", tmp_path / "t8.txt", "--n-layer", 2, "--n-head", 2, "--n-embd", 64,
                 "--block-size", 32, "--batch-size", 32, "--max-iters", 80, "--dropout", 0.0, "--out-dir", tmp_path)
    s = summary(tmp_path)
    test = text[len(text) * 95 // 100:]
    counts = Counter(test)
    unigram_bits = -sum(c / len(test) * math.log2(c / len(test)) for c in counts.values())
    assert s["test_chars"] == len(test) and s["val_chars"] == len(text) * 5 // 100
    assert s["test_bpc"] < unigram_bits - 1.2, (s["test_bpc"], unigram_bits)
    assert "test" in result.stdout.splitlines()[-1]


def test_text8_download_is_checked_and_done_once(tmp_path, monkeypatch):
    """text8.zip through the library's checked download (a local file:// URL here), unpacked once into data_dir."""
    import hashlib
    import zipfile
    text8 = load("text8")
    data = b"anarchism originated as a term of abuse " * 100
    with zipfile.ZipFile(tmp_path / "served.zip", "w") as archive:
        archive.writestr("text8", data)
    monkeypatch.setattr(text8, "URL", (tmp_path / "served.zip").as_uri())
    monkeypatch.setattr(text8, "ZIP_SHA256", hashlib.sha256((tmp_path / "served.zip").read_bytes()).hexdigest())
    monkeypatch.setattr(text8, "TEXT8_SHA256", hashlib.sha256(data).hexdigest())
    assert text8.text8_bytes(tmp_path / "data") == data
    assert (tmp_path / "data" / "text8").read_bytes() == data
    (tmp_path / "served.zip").unlink()  # a second call reads data_dir/text8 and never the URL
    assert text8.text8_bytes(tmp_path / "data") == data
    monkeypatch.setattr(text8, "TEXT8_SHA256", "0" * 64)  # a zip whose text8 is not the expected one
    with pytest.raises(text8.GPTCoreError, match="does not have the sha256"):
        text8.text8_bytes(tmp_path / "data")


def test_text8_rejects_characters_outside_its_alphabet(tmp_path):
    (tmp_path / "bad.txt").write_text("hello World " * 100)
    result = run("text8", "--input", tmp_path / "bad.txt", "--out-dir", tmp_path, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "alphabet" in result.stderr
