"""sample.py end to end, against the library called directly with the same model, seed and settings."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptcore import GPT, GPTConfig, GPTCoreError
from gptcore.checkpoint import (checkpoint_path, export_model, load_checkpoint, model_checkpoint, model_from_checkpoint,
                                save_checkpoint)
from gptcore.infer import Generator
from gptcore.tokenizer import CharTokenizer, get_tokenizer

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sample_script", ROOT / "sample.py")
sample = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sample)

CHARS = "abcdefghijklmnopqrstuvwxyz ,.\n"


def tiny_checkpoint(path, tokenizer, seed=0, block_size=32):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=block_size, vocab_size=tokenizer.n_vocab, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)  # varied continuations, so that using the wrong model would show
    save_checkpoint(str(path), model_checkpoint(model, tokenizer, step=seed))
    return model.eval()


@pytest.fixture
def char_ckpt(tmp_path):
    tok = CharTokenizer(CHARS)
    path = tmp_path / "char.pt"
    return path, tiny_checkpoint(path, tok), tok


def expected(model, tok, prompt, max_tokens, seed, stop=True, dtype="float32", quantize=None, **sampling):
    """What sample.py should print: the prompt, then the library's continuation up to <|endoftext|>."""
    ids = tok.encode(prompt, allow_special=True) if prompt else [tok.eot_token]
    kw = {"temperature": 0.8, "top_k": 200, **sampling}
    engine = Generator(model, dtype=dtype, quantize=quantize)
    out = engine.generate([ids], max_tokens, do_sample=kw["temperature"] > 0, seed=seed,
                          stop_token=tok.eot_token if stop else None, **kw)
    new = out[0][len(ids):]
    if stop and tok.eot_token in new:
        new = new[:new.index(tok.eot_token)]
    return prompt + tok.decode(new) + "\n"


def run_main(capsys, *argv):
    sample.main([*argv, "--device", "cpu"])
    return capsys.readouterr()


def test_checkpoint_file_matches_library(char_ckpt, capsys):
    path, model, tok = char_ckpt
    out = run_main(capsys, "--checkpoint", str(path), "-p", "to be", "-m", "40", "--seed", "3", "--dtype", "float32",
                   "--no-stop")
    assert out.out == expected(model, tok, "to be", 40, seed=3, stop=False)


def test_default_dtype_is_the_engines_default(char_ckpt, capsys):
    path, model, tok = char_ckpt
    out = run_main(capsys, "--checkpoint", str(path), "-p", "the ", "-m", "30", "--seed", "4", "--top-p", "0.9")
    assert out.out == expected(model, tok, "the ", 30, seed=4, top_p=0.9, dtype=None)
    assert f"sampling from {path}" in out.err


def test_default_model_says_how_to_sample_your_own(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sample, "RUN_FOLDERS", ("out", str(tmp_path / "repo-out")))  # no runs anywhere
    err = run_main(capsys, "-m", "2", "--seed", "0").err.splitlines()
    assert err[0] == f"sampling from {ROOT / 'checkpoint' / 'quickstart.pt'}"
    default_run = os.path.relpath(ROOT / "out" / "quickstart")  # the default preset's run, as train.py names it
    assert err[1] == f"to sample a model of your own: python train.py, then python sample.py --checkpoint {default_run}"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "ckpt_0000001.pt").write_bytes(b"")
    assert run_main(capsys, "-m", "2", "--seed", "0").err.splitlines()[1] == \
        "your runs: out; sample one with: python sample.py --checkpoint out"


def test_a_chosen_model_gets_no_hint(char_ckpt, capsys):
    path, _, _ = char_ckpt
    assert run_main(capsys, "--checkpoint", str(path), "-m", "2", "--seed", "0").err.splitlines() == \
        [f"sampling from {path}"]


@pytest.mark.parametrize("flags, dtype, quantize", [(["--dtype", "bfloat16"], "bfloat16", None),
                                                    (["--quantize", "int8", "--dtype", "float32"], "float32", "int8")])
def test_dtype_and_quantize_flags_reach_the_engine(char_ckpt, capsys, flags, dtype, quantize):
    path, model, tok = char_ckpt
    out = run_main(capsys, "--checkpoint", str(path), "-p", "the ", "-m", "30", "--seed", "4", *flags)
    assert out.out == expected(model, tok, "the ", 30, seed=4, dtype=dtype, quantize=quantize)


def test_out_dir_uses_its_newest_checkpoint(tmp_path, capsys):
    tok = CharTokenizer(CHARS)
    tiny_checkpoint(checkpoint_path(str(tmp_path), 1), tok, seed=1)
    newest = tiny_checkpoint(checkpoint_path(str(tmp_path), 2), tok, seed=2)
    out = run_main(capsys, "--checkpoint", str(tmp_path), "-p", "ab", "-m", "25", "--seed", "0",
                   "--temperature", "0", "--dtype", "float32")
    assert out.out == expected(newest, tok, "ab", 25, seed=0, temperature=0)


def test_default_is_the_committed_checkpoint(tmp_path, monkeypatch, capsys):
    tok = CharTokenizer(CHARS)
    model = tiny_checkpoint(tmp_path / "shakespeare_char.pt", tok, seed=5)
    monkeypatch.setattr(sample, "COMMITTED_DIR", str(tmp_path))
    out = run_main(capsys, "-p", "so", "-m", "20", "--seed", "1", "--dtype", "float32")
    assert out.out == expected(model, tok, "so", 20, seed=1)
    assert "untrained" not in out.err


def test_default_picks_up_an_exported_bf16_checkpoint(tmp_path, monkeypatch, capsys):
    # the committed checkpoint is written by train.py --export: weights only, in bf16
    tok = CharTokenizer(CHARS)
    export_model(tiny_checkpoint(tmp_path / "full.pt", tok, seed=6), tok, 100, str(tmp_path / "committed" / "small.pt"))
    monkeypatch.setattr(sample, "COMMITTED_DIR", str(tmp_path / "committed"))
    out = run_main(capsys, "-p", "we ", "-m", "25", "--seed", "2", "--dtype", "float32")
    model, _ = model_from_checkpoint(load_checkpoint(str(tmp_path / "committed" / "small.pt")))
    assert out.out == expected(model, tok, "we ", 25, seed=2)


def test_no_committed_checkpoint_samples_untrained_gpt2_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sample, "COMMITTED_DIR", str(tmp_path / "none"))
    monkeypatch.setattr(sample, "RUN_FOLDERS", (str(tmp_path / "out"),))
    out = run_main(capsys, "-p", "Hello", "-m", "3", "--seed", "0", "--no-stop", "--dtype", "float32")
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval()  # the same seed gives the same untrained weights
    assert out.out == expected(model, get_tokenizer("gpt2"), "Hello", 3, seed=0, stop=False)
    note, hint = out.err.strip().splitlines()
    assert "untrained" in note and hint.startswith("to sample a model of your own: python train.py")


def test_empty_prompt_starts_from_endoftext(char_ckpt, capsys):
    path, model, tok = char_ckpt
    out = run_main(capsys, "--checkpoint", str(path), "-m", "30", "--seed", "2", "--dtype", "float32")
    assert out.out == expected(model, tok, "", 30, seed=2)
    out = run_main(capsys, "--checkpoint", str(path), "-p", "", "-m", "30", "--seed", "2", "--dtype", "float32")
    assert out.out == expected(model, tok, "", 30, seed=2)


def test_prompt_longer_than_context_warns_and_keeps_the_end(char_ckpt, capsys):
    path, model, tok = char_ckpt
    prompt = "the quick brown fox jumps over the lazy dog, " * 3  # 135 characters, context 32
    out = run_main(capsys, "--checkpoint", str(path), "-p", prompt, "-m", "10", "--seed", "0",
                   "--temperature", "0", "--dtype", "float32")
    continuation = expected(model, tok, prompt[-32:], 10, seed=0, temperature=0)[32:]
    assert out.out == prompt + continuation
    assert "135 tokens" in out.err and "last 32" in out.err


def test_stream_and_no_stream_print_the_same(char_ckpt, capsys):
    path, model, tok = char_ckpt
    common = ["--checkpoint", str(path), "-p", "a", "-m", "30", "--seed", "6", "--num-samples", "3", "--dtype",
              "float32"]
    streamed = run_main(capsys, *common, "--stream").out
    assert streamed == run_main(capsys, *common, "--no-stream").out
    # sample i is drawn with seed 6 + i, whatever else is in the batch
    want = [expected(model, tok, "a", 30, seed=6 + i) for i in range(3)]
    assert streamed == (sample.SEPARATOR + "\n").join(want)
    assert len(set(want)) == 3


def test_gpt2_tokenizer_checkpoint_and_pretrained_folder(tmp_path, capsys):
    tok = get_tokenizer("gpt2")
    model = tiny_checkpoint(tmp_path / "bpe.pt", tok, seed=7)
    prompt = "Hello, I'm a language model,"
    out = run_main(capsys, "--checkpoint", str(tmp_path / "bpe.pt"), "-p", prompt, "-m", "12", "--seed", "0",
                   "--dtype", "float32")
    assert out.out == expected(model, tok, prompt, 12, seed=0)
    model.save_pretrained(str(tmp_path / "hf"))
    out = run_main(capsys, "--pretrained", str(tmp_path / "hf"), "-p", prompt, "-m", "12", "--seed", "0",
                   "--dtype", "float32")
    assert out.out == expected(model, tok, prompt, 12, seed=0)


def test_char_checkpoint_rejects_characters_it_does_not_know(char_ckpt):
    path, _, _ = char_ckpt
    with pytest.raises(GPTCoreError, match="'Q' is not in this character-level tokenizer"):
        sample.main(["--checkpoint", str(path), "-p", "Queen", "-m", "5"])


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "0"], "top_p"), (["--top-p", "1.5"], "top_p"), (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"), (["--top-k", "0"], "top_k"), (["-m", "-3"], "max-tokens"),
    (["-m", "0"], "max-tokens"),
    (["--num-samples", "0"], "num-samples"),
])
def test_bad_sampling_flags_fail_before_loading_anything(flags, message, tmp_path):
    with pytest.raises(GPTCoreError, match=message):
        sample.main(["--checkpoint", str(tmp_path / "missing.pt"), *flags])  # the flag is reported, not the path


def test_errors_are_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for flags in (["--top-p", "1.5"], ["--checkpoint", str(tmp_path / "missing.pt")]):
        proc = subprocess.run([sys.executable, str(ROOT / "sample.py"), *flags], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 2
        assert proc.stdout == "" and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
