"""Issue 19, acceptance 1: minGPT-style scripts run end to end on gptcore.

tests/scripts/mingpt_chargpt.py (minGPT's projects/chargpt) runs the way a user runs it: a subprocess, overrides on
the command line. The checks do not trust the script: model.pt goes into a fresh GPT, the greedy continuation is
recomputed as the argmax of full forward passes (no KV cache), and each top-k sampled character must be among the
10 most likely at its position. minGPT's generate.ipynb flow runs in-process against transformers.
"""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gptcore import GPT
from gptcore.bpe import BPETokenizer
from gptcore.tokenizer import GPT2Tokenizer
from gptcore.utils import set_seed

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SCRIPT = ROOT / "tests" / "scripts" / "mingpt_chargpt.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp("chargpt") / "out"
    args = ["--trainer.max_iters=50", "--model.model_type=gpt-nano", f"--data.input_file={TEXT}",
            f"--system.work_dir={work_dir}"]
    # one thread: for a model this small a second one only adds waiting, and the machine may be shared
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, [str(SCRIPT), *args], work_dir


def test_the_script_trains_and_reports_through_its_callback(run):
    stdout, _, _ = run
    steps = [(int(n), float(dt), float(loss)) for dt, n, loss in
             re.findall(r"iter_dt ([\d.]+)ms; iter (\d+): train loss ([\d.]+)", stdout)]
    # every 10th of the 50 steps; minGPT counts the first one as iter_num 0, gptcore as 1: both print 5 lines
    iters = [n for n, _, _ in steps]
    assert iters in ([0, 10, 20, 30, 40], [10, 20, 30, 40, 50])
    assert all(dt > 0 for _, dt, _ in steps)
    assert steps[-1][2] < 0.85 * steps[0][2]  # 50 steps on characters: well below where it started
    assert "model:\n    model_type: gpt-nano\n" in stdout  # print(config), sections indented


def test_the_script_logged_its_command_line_and_config(run):
    _, argv, work_dir = run
    assert shlex.split((work_dir / "args.txt").read_text()) == argv
    with open(work_dir / "config.json") as f:
        config = json.load(f)
    assert set(config) == {"system", "data", "model", "trainer"}
    assert config["trainer"]["max_iters"] == 50 and config["model"]["model_type"] == "gpt-nano"
    assert config["data"]["input_file"] == str(TEXT) and config["system"]["work_dir"] == str(work_dir)


def test_samples_match_the_saved_model(run):
    _, _, work_dir = run
    with open(work_dir / "samples.json") as f:
        samples = json.load(f)
    assert samples["iter_num"] in (25, 50)  # the last multiple of 25 reached in 50 steps, by either count
    assert samples["device"] == ("cuda" if torch.cuda.is_available() else "cpu")

    text = TEXT.read_text(encoding="utf-8")[:12000]
    config = GPT.get_default_config()
    config.model_type = "gpt-nano"
    config.vocab_size, config.block_size = len(set(text)), 32
    model = GPT(config)
    model.load_state_dict(torch.load(work_dir / "model.pt", map_location="cpu"))
    model.eval()

    prompt, greedy, sampled = samples["prompt"], samples["greedy"], samples["sampled"]
    assert len(prompt) == 13 and greedy[:13] == sampled[:13] == prompt
    assert len(greedy) == len(sampled) == 13 + 16
    with torch.no_grad():
        expected = list(prompt)
        for _ in range(16):
            logits, _ = model(torch.tensor([expected]))
            expected.append(int(logits[0, -1].argmax()))
        assert greedy == expected
        for t in range(13, len(sampled)):
            logits, _ = model(torch.tensor([sampled[:t]]))
            assert sampled[t] in logits[0, -1].topk(10).indices.tolist()


def test_the_generate_notebook_flow_matches_transformers(tmp_path):
    """minGPT's generate.ipynb: from_pretrained, BPETokenizer(), unconditional and prompted generation, decode rows.

    On a random-weights GPT-2 folder saved by transformers; greedy ids must be transformers' argmax, step by step.
    """
    set_seed(3407)
    reference = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).eval()
    reference.save_pretrained(tmp_path / "gpt2-random")
    model = GPT.from_pretrained(str(tmp_path / "gpt2-random"))
    model.eval()
    tokenizer = BPETokenizer()
    tik = GPT2Tokenizer().enc

    unconditional = torch.tensor([[tokenizer.encoder.encoder["<|endoftext|>"]]], dtype=torch.long)
    prompted = tokenizer("Andrej Karpathy, the")
    assert prompted[0].tolist() == tik.encode_ordinary("Andrej Karpathy, the")
    for x in (unconditional, prompted):
        x = x.expand(3, -1)
        greedy = model.generate(x, max_new_tokens=6, do_sample=False)
        expected = x[:1]
        with torch.no_grad():
            for _ in range(6):
                logits = reference(expected).logits[0, -1]
                top2 = logits.topk(2).values
                assert top2[0] - top2[1] > 1e-4  # a clear winner, so float rounding cannot change the argmax
                expected = torch.cat([expected, logits.argmax().view(1, 1)], dim=1)
        assert (greedy == expected).all()  # every row of the batch
        sampled = model.generate(x, max_new_tokens=6, do_sample=True, top_k=40)
        assert sampled.shape == (3, x.size(1) + 6)
        for row in sampled:
            assert tokenizer.decode(row.cpu().squeeze()) == tik.decode(row.tolist())
