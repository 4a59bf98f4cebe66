"""Data: prepare's shards decode back to their sources, the loader's order, DDP split and resume, and the errors.

References: the source text itself, tiktoken's encode_ordinary on it, and for the loader shards whose every token id is
unique, so which token went where can be checked exactly.
"""

import json
import os
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gptcore import corpora
from gptcore.data import ShardLoader, read_meta, read_tokens, shard_token_count, write_meta, write_shard
from gptcore.errors import GPTCoreError
from gptcore.tokenizer import EOT, GPT2_EOT_ID, get_tokenizer, tokenizer_from_description

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHAKESPEARE = SHARED / "tinyshakespeare.txt"
LAMBADA = SHARED / "lambada_openai.jsonl"


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer("gpt2")


def all_tokens(data_dir) -> np.ndarray:
    """Train then val shards of a prepared dataset, concatenated."""
    meta = read_meta(str(data_dir))
    return np.concatenate([read_tokens(os.path.join(data_dir, n)) for n in meta["train_shards"] + meta["val_shards"]])


def split_documents(tokens: np.ndarray, tokenizer) -> list[str]:
    """Decodes each end-of-text-terminated run of tokens separately."""
    ends = np.flatnonzero(tokens == tokenizer.eot_token)
    assert ends.size and ends[-1] == len(tokens) - 1, "every document must end with the end-of-text token"
    return [tokenizer.decode(piece[:-1].tolist()) for piece in np.split(tokens, ends + 1)[:-1]]


def make_corpus_folder(root: Path) -> list[str]:
    """A small multi-document corpus (.txt files, nested, and a .jsonl); returns its documents."""
    docs = {"a.txt": "First document.\nWith two lines, and unicode: café, 日本語, 🙂\n",
            "b.txt": "",
            "sub/c.txt": "A document that mentions <|endoftext|> as plain text.",
            "sub/deeper/d.txt": "tabs\tand   spaces\n\n\n" * 50}
    for name, text in docs.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    lines = ["jsonl one", "jsonl two\nwith a newline", "ünïcödé " * 40]
    (root / "e.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(lines)) + "\n\n",
                                  encoding="utf-8")
    (root / "ignored.csv").write_text("not,a,document\n")
    return list(docs.values()) + lines


# ------------------------------------------------------------------------------------------------------ shard format

def test_shard_format_matches_the_documented_layout(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.uint16)
    path = str(tmp_path / "s.bin")
    write_shard(path, tokens)
    raw = Path(path).read_bytes()
    assert len(raw) == 256 + 2 * 5
    assert raw[:8] == b"GPTCSHRD" and struct.unpack("<IIQ", raw[8:24]) == (1, 1, 5) and raw[24:256] == bytes(232)
    assert np.frombuffer(raw[256:], dtype="<u2").tolist() == tokens.tolist()
    assert shard_token_count(path) == 5
    assert read_tokens(path, 1, 3).tolist() == [1, 50256, 65535]
    assert not [f for f in os.listdir(tmp_path) if f != "s.bin"], "no temp file may be left behind"


@pytest.mark.parametrize("damage, why", [
    (lambda raw: raw[:-1], "file has"),
    (lambda raw: raw[:100], "shorter than"),
    (lambda raw: b"", "shorter than"),
    (lambda raw: b"NOTASHRD" + raw[8:], "magic"),
    (lambda raw: raw[:8] + struct.pack("<I", 99) + raw[12:], "version"),
    (lambda raw: raw[:12] + struct.pack("<I", 7) + raw[16:], "dtype"),
])
def test_truncated_or_corrupt_shard_is_a_clear_error(tmp_path, damage, why):
    path = tmp_path / "train_000000.bin"
    write_shard(str(path), np.arange(100, dtype=np.uint16))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(GPTCoreError, match=why) as e:
        read_tokens(str(path))
    assert str(path) in str(e.value) and "prepare.py" in str(e.value)


def test_loader_refuses_a_dataset_with_a_truncated_shard(tmp_path):
    make_unique_dataset(tmp_path, [300, 300])
    shard = tmp_path / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(GPTCoreError, match="train_000001.bin is truncated or corrupt"):
        ShardLoader(str(tmp_path), batch_size=2, block_size=8)


def test_read_meta_says_how_to_prepare(tmp_path):
    with pytest.raises(GPTCoreError, match=r"no prepared dataset at .*python data/prepare.py"):
        read_meta(str(tmp_path / "nothing"))


# ---------------------------------------------------------------------------------------------------------- prepare

def test_shakespeare_gpt2_shards_decode_to_the_text(tmp_path, gpt2):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    meta, worked = corpora.prepare("shakespeare", source_file=str(SHAKESPEARE), out_dir=str(tmp_path), workers=2)
    assert worked
    tokens = all_tokens(tmp_path)
    assert tokens.tolist() == gpt2.enc.encode_ordinary(text) + [GPT2_EOT_ID]
    assert gpt2.decode(tokens.tolist()) == text + EOT
    assert meta["val_tokens"] == round(0.1 * len(tokens)) and meta["train_tokens"] + meta["val_tokens"] == len(tokens)
    assert (meta["vocab_size"], meta["input_hash"]) == (50257, corpora.SHAKESPEARE_SHA256)


def test_shakespeare_char_shards_decode_to_the_text(tmp_path):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    meta, _ = corpora.prepare("shakespeare", source_file=str(SHAKESPEARE), out_dir=str(tmp_path), tokenizer="char",
                              workers=1)
    tok = tokenizer_from_description(meta["tokenizer"])
    assert meta["vocab_size"] == len(set(text)) + 1 == tok.n_vocab
    assert tok.decode(all_tokens(tmp_path).tolist()) == text + EOT


@pytest.mark.parametrize("tokenizer", ["gpt2", "char"])
def test_folder_documents_come_back_whole(tmp_path, tokenizer):
    docs = make_corpus_folder(tmp_path / "corpus")
    meta, _ = corpora.prepare(str(tmp_path / "corpus"), out_dir=str(tmp_path / "out"), tokenizer=tokenizer,
                              shard_tokens=300, workers=2)
    tok = tokenizer_from_description(meta["tokenizer"])
    assert Counter(split_documents(all_tokens(tmp_path / "out"), tok)) == Counter(docs)
    assert meta["documents"] == len(docs) and len(meta["train_shards"]) > 1
    assert all(shard_token_count(str(tmp_path / "out" / n)) == 300 for n in meta["train_shards"][:-1])


def test_val_split_is_deterministic_and_a_fraction_of_the_tokens(tmp_path):
    make_corpus_folder(tmp_path / "corpus")
    for out in ("one", "two"):
        meta, _ = corpora.prepare(str(tmp_path / "corpus"), out_dir=str(tmp_path / out), val_fraction=0.25,
                                  workers=1)
    for name in meta["train_shards"] + meta["val_shards"] + ["meta.json"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert meta["val_tokens"] == round(0.25 * (meta["train_tokens"] + meta["val_tokens"]))


def test_rerun_does_nothing_and_changed_options_rebuild(tmp_path):
    make_corpus_folder(tmp_path / "corpus")
    out = tmp_path / "out"
    corpora.prepare(str(tmp_path / "corpus"), out_dir=str(out), workers=1)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    _, worked = corpora.prepare(str(tmp_path / "corpus"), out_dir=str(out), workers=1)
    assert not worked and stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (tmp_path / "corpus" / "a.txt").write_text("changed", encoding="utf-8")
    meta, worked = corpora.prepare(str(tmp_path / "corpus"), out_dir=str(out), workers=1, tokenizer="char")
    assert worked and meta["tokenizer"]["type"] == "char"
    assert sorted(p.name for p in out.iterdir()) == sorted(["meta.json"] + meta["train_shards"] + meta["val_shards"])


def test_non_utf8_file_is_an_error_naming_it(tmp_path):
    make_corpus_folder(tmp_path / "corpus")
    (tmp_path / "corpus" / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(GPTCoreError, match=r"latin1\.txt is not UTF-8"):
        corpora.prepare(str(tmp_path / "corpus"), out_dir=str(tmp_path / "out"), workers=1)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_python_sources_are_decoded_by_their_coding_line(tmp_path):
    declared = tmp_path / "declared.py"
    declared.write_bytes("# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n".encode("latin-1"))
    assert corpora.read_python_source(str(declared)).endswith("name = 'café'\n")
    undeclared = tmp_path / "undeclared.py"
    undeclared.write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    with pytest.raises(GPTCoreError, match="undeclared.py cannot be decoded"):
        corpora.read_python_source(str(undeclared))


def test_unknown_dataset_lists_the_known_names(tmp_path):
    with pytest.raises(GPTCoreError) as e:
        corpora.prepare("no-such-corpus", out_dir=str(tmp_path))
    assert all(name in str(e.value) for name in ("pystdlib", "shakespeare", "fineweb-edu", "openwebtext"))


def test_shakespeare_from_another_file_is_refused(tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("not shakespeare", encoding="utf-8")
    with pytest.raises(GPTCoreError, match="is not tinyshakespeare"):
        corpora.prepare("shakespeare", source_file=str(other), out_dir=str(tmp_path / "out"))


def test_default_pystdlib_corpus(tmp_path, gpt2):
    root, files = corpora.stdlib_files()
    assert not [f for f in files if "/test/" in f or "/tests/" in f or os.path.basename(f).startswith("test_")]
    meta, _ = corpora.prepare(out_dir=str(tmp_path), workers=2)
    assert meta["dataset"] == "pystdlib" and meta["documents"] == len(files) > 300
    docs = [Path(f).read_text(encoding="utf-8") for f in files]  # this Python's stdlib is all UTF-8 (no tests)
    assert Counter(split_documents(all_tokens(tmp_path), gpt2)) == Counter(docs)


# --------------------------------------------------------------------------------------------------------- streamed

def lambada_docs(n: int) -> list[str]:
    with open(LAMBADA, encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


def shard_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.bin"))}


def test_streamed_path_on_local_files_resumes_to_the_same_shards(tmp_path, gpt2, monkeypatch, capsys):
    docs = lambada_docs(120)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
    shard = 2500

    meta, _ = corpora.prepare("fineweb-edu", source_file=str(jsonl), out_dir=str(tmp_path / "whole"),
                              shard_tokens=shard, workers=2)
    expected = np.concatenate([gpt2.enc.encode_ordinary(t) + [GPT2_EOT_ID] for t in docs])
    assert all_tokens(tmp_path / "whole").tolist() == np.concatenate(
        [expected[shard:], expected[:shard]]).tolist(), "val is the first shard, train the rest, in stream order"
    assert meta["val_shards"] == ["val_000000.bin"] and meta["val_tokens"] == shard
    assert len(meta["train_shards"]) >= 4 and meta["documents"] == len(docs)
    assert not (tmp_path / "whole" / "progress.json").exists()

    real_write, written = corpora.write_shard, []

    def write_then_die(path, tokens):
        if len(written) == 3:
            raise KeyboardInterrupt  # as if the run were stopped while the 4th shard was being made
        real_write(path, tokens)
        written.append(path)

    monkeypatch.setattr(corpora, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        corpora.prepare("fineweb-edu", source_file=str(jsonl), out_dir=str(tmp_path / "cut"), shard_tokens=shard,
                        workers=1)
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    assert len(progress["shards"]) == 3 and progress["skip_tokens"] > 0, "the cut must fall inside a document"
    assert not (tmp_path / "cut" / "meta.json").exists()
    monkeypatch.setattr(corpora, "write_shard", real_write)

    capsys.readouterr()
    resumed, worked = corpora.prepare("fineweb-edu", source_file=str(jsonl), out_dir=str(tmp_path / "cut"),
                                      shard_tokens=shard, workers=1)
    assert worked and "resuming after 3 complete shards" in capsys.readouterr().out
    assert shard_bytes(tmp_path / "cut") == shard_bytes(tmp_path / "whole")
    assert resumed == meta and sorted(os.listdir(tmp_path / "cut")) == sorted(os.listdir(tmp_path / "whole"))

    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": docs}), tmp_path / "docs.parquet")
    corpora.prepare("openwebtext", source_file=str(tmp_path / "docs.parquet"), out_dir=str(tmp_path / "pq"),
                    shard_tokens=shard, workers=1)
    assert shard_bytes(tmp_path / "pq") == shard_bytes(tmp_path / "whole")


# ----------------------------------------------------------------------------------------------------------- script

def run_prepare(*args):
    return subprocess.run([sys.executable, str(REPO / "data" / "prepare.py"), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_script_shakespeare_and_rerun(tmp_path):
    out = tmp_path / "shakespeare"
    args = ["--dataset", "shakespeare", "--from", "../shared/data/tinyshakespeare.txt", "--out-dir", str(out)]
    first = run_prepare(*args)
    assert first.returncode == 0, first.stderr
    assert "prepared" in first.stdout and "tok/s" in first.stderr
    assert read_meta(str(out))["input_hash"] == corpora.SHAKESPEARE_SHA256
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_prepare(*args)
    assert again.returncode == 0 and "already prepared" in again.stdout
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}


def test_script_local_folder(tmp_path):
    make_corpus_folder(tmp_path / "my_corpus")
    done = run_prepare("--dataset", str(tmp_path / "my_corpus"), "--out-dir", str(tmp_path / "out"),
                       "--tokenizer", "char")
    assert done.returncode == 0, done.stderr
    assert read_meta(str(tmp_path / "out"))["dataset"] == "my_corpus"


def test_script_errors_are_one_line_and_exit_2(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "data"))
    try:
        import prepare
    finally:
        sys.path.remove(str(REPO / "data"))
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    for argv, needle in [(["--dataset", "nope"], "known names are pystdlib, shakespeare, fineweb-edu, openwebtext"),
                         (["--dataset", str(tmp_path / "bad.txt")], "bad.txt is not UTF-8")]:
        assert prepare.main(argv + ["--out-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------- loader

def make_unique_dataset(folder: Path, train_sizes: list[int], val_sizes=(50,)) -> list[np.ndarray]:
    """Shards whose token ids are all distinct (consecutive within a shard); returns the train shards' tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    start, shards = 0, {"train": [], "val": []}
    arrays = []
    for split, sizes in (("train", train_sizes), ("val", val_sizes)):
        for i, n in enumerate(sizes):
            tokens = np.arange(start, start + n, dtype=np.uint16)
            start += n + 1000
            write_shard(str(folder / f"{split}_{i:06d}.bin"), tokens)
            shards[split].append(f"{split}_{i:06d}.bin")
            if split == "train":
                arrays.append(tokens)
    write_meta(str(folder), {"format_version": 1, "input_hash": "synthetic", "vocab_size": 65536,
                             "train_shards": shards["train"], "val_shards": shards["val"]})
    return arrays


T = 16
SIZES = [1001, 545, 2049, 10]  # 62 + 34 + 128 + 0 chunks of 16 tokens: 224 per epoch


def test_two_ranks_use_each_training_token_once_per_epoch_like_one_process(tmp_path):
    shards = make_unique_dataset(tmp_path, SIZES)
    ranks = [ShardLoader(str(tmp_path), batch_size=4, block_size=T, rank=r, world_size=2, seed=7) for r in (0, 1)]
    single = ShardLoader(str(tmp_path), batch_size=4, block_size=T, seed=7)
    assert ranks[0].chunks_per_epoch == 224 and ranks[0].tokens_per_epoch == 224 * T
    inputs = []
    for _ in range(224 // 8 + 3):  # one epoch, then into the next
        for r, loader in enumerate(ranks):
            x, y = loader.next_batch()
            assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
            assert torch.equal(y, x + 1), "y is the next token of the same shard"
            sx, sy = single.next_batch()
            assert torch.equal(x, sx) and torch.equal(y, sy), "rank r's block is the single process's step 2k+r"
            inputs.append(x)
    epoch = torch.cat(inputs[:224 // 4]).flatten().numpy()
    usable = np.concatenate([s[:((len(s) - 1) // T) * T] for s in shards])
    assert np.array_equal(np.sort(epoch), usable), "every usable token is an input exactly once in the epoch"
    assert ranks[0].state_dict() == ranks[1].state_dict() == {**single.state_dict()}
    assert ranks[0].state_dict()["epoch"] == 1


def test_order_is_a_seeded_shuffle_of_shards_and_chunks(tmp_path):
    largest = make_unique_dataset(tmp_path, SIZES)[2]

    def first_tokens(seed, shuffle, steps):
        loader = ShardLoader(str(tmp_path), batch_size=8, block_size=T, seed=seed, shuffle=shuffle)
        return torch.cat([loader.next_batch()[0][:, 0] for _ in range(steps)]).tolist()

    natural = first_tokens(0, False, 28)
    assert natural == sorted(natural), "shuffle=False reads shards and chunks in order"
    shuffled = first_tokens(1, True, 56)
    assert shuffled == first_tokens(1, True, 56) and shuffled != first_tokens(2, True, 56)
    assert shuffled[:224] != natural and sorted(shuffled[:224]) == natural
    assert sorted(shuffled[224:]) == natural
    in_largest_shard = [[t for t in epoch if largest[0] <= t <= largest[-1]]
                        for epoch in (shuffled[:224], shuffled[224:])]
    assert in_largest_shard[0] != in_largest_shard[1], "each epoch shuffles a shard's chunks anew"


@pytest.mark.parametrize("batch_size, world_size, save_at", [(5, 1, 40), (3, 2, 20), (4, 1, 3)])
def test_restored_state_gives_the_same_next_batches(tmp_path, batch_size, world_size, save_at):
    make_unique_dataset(tmp_path, SIZES)

    def loaders():
        return [ShardLoader(str(tmp_path), batch_size=batch_size, block_size=T, rank=r, world_size=world_size)
                for r in range(world_size)]

    run = loaders()
    for _ in range(save_at):
        for loader in run:
            loader.next_batch()
    state = json.loads(json.dumps(run[0].state_dict()))
    expected = [[loader.next_batch() for loader in run] for _ in range(60)]  # crosses an epoch boundary
    resumed = loaders()
    for loader in resumed:
        loader.load_state_dict(state)
    for step in expected:
        for loader, (x, y) in zip(resumed, step):
            nx, ny = loader.next_batch()
            assert torch.equal(nx, x) and torch.equal(ny, y)
    assert resumed[0].state_dict()["epoch"] >= 1


def test_memory_stays_flat_over_many_epochs(tmp_path):
    import tracemalloc
    make_unique_dataset(tmp_path, SIZES)
    loader = ShardLoader(str(tmp_path), batch_size=8, block_size=T)
    for _ in range(50):
        loader.next_batch()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1500):  # about 50 epochs
            loader.next_batch()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert loader.state_dict()["epoch"] >= 50 and grown < 50_000, f"{grown} bytes held after 1500 batches"


def test_reset_replays_the_same_val_batches(tmp_path):
    make_unique_dataset(tmp_path, SIZES, val_sizes=(300, 200))
    val = ShardLoader(str(tmp_path), "val", batch_size=4, block_size=T, shuffle=False)
    first = [val.next_batch() for _ in range(5)]
    val.reset()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, [val.next_batch() for _ in range(5)]))


def test_loader_errors(tmp_path):
    make_unique_dataset(tmp_path, [20, 30])
    with pytest.raises(GPTCoreError, match="block_size"):
        ShardLoader(str(tmp_path), batch_size=2, block_size=64)
    loader = ShardLoader(str(tmp_path), batch_size=2, block_size=8, seed=1)
    other = ShardLoader(str(tmp_path), batch_size=2, block_size=8, seed=2)
    with pytest.raises(GPTCoreError, match="seed"):
        other.load_state_dict(loader.state_dict())
    with pytest.raises(GPTCoreError, match="unknown split"):
        ShardLoader(str(tmp_path), "test", batch_size=2, block_size=8)
