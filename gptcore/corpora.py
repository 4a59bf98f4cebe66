"""Corpora: where the documents come from, and how prepare turns them into token shards (format in gptcore/data.py).

Sources, by --dataset:
    pystdlib      (default) the running Python's standard library: its .py files, sorted, without tests
                  (test/, tests/, idle_test/, test_*.py) and site-packages; one document per file, about 12 MB.
    shakespeare   tinyshakespeare (1.1 MB, one document): downloaded from its canonical URL, or read with
                  --from FILE; either way its sha256 must be the canonical one.
    fineweb-edu   HuggingFaceFW/fineweb-edu, sample-10BT, and
    openwebtext   Skylion007/openwebtext: streamed with Hugging Face `datasets`, or read from local .jsonl or
                  .parquet files with --from (the same streaming code path, offline).
    PATH          a text file (one document), a .jsonl file, or a folder or glob of .txt and .jsonl files
                  (one document per .txt file, one per jsonl line, from its field "text"); the output folder
                  is named after the file's stem or the folder's name.

Text: .txt and .jsonl files must be UTF-8; a file that is not fails with an error naming it (nothing is silently
replaced). Python files are decoded as Python itself decodes them: UTF-8 unless a PEP 263 coding line says otherwise.

Every document ends with the tokenizer's end-of-text token, as in GPT-2's training data.

Val split, deterministic:
    local sources   the documents are put in an order shuffled with SPLIT_SEED, their tokens concatenated, and the
                    last --val-fraction of the tokens is val (so a single document such as tinyshakespeare works).
    streamed        the first shard is val, the rest train (as build-nanogpt does for fineweb-edu).

Reruns: meta.json records the input hash and the options; when they match and the shards are intact, prepare does
nothing. Streamed corpora are written shard by shard, each followed by progress.json; an interrupted run continues
after its last complete shard, skipping the documents already written.
"""

import glob
import hashlib
import io
import json
import multiprocessing
import os
import sys
import sysconfig
import tokenize
from collections import deque
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import FORMAT_VERSION, META_FILE, shard_name, shard_token_count, write_meta, write_shard
from .errors import GPTCoreError
from .fileio import download, sha256_file, write_json
from .tokenizer import CharTokenizer, GPT2Tokenizer, get_tokenizer, tokenizer_from_description

DEFAULT_DATASET = "pystdlib"
DEFAULT_TOKENIZER = "gpt2"
TOKENIZERS = ("gpt2", "char")
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SHARD_TOKENS = 100_000_000
SPLIT_SEED = 1337
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# load_dataset() arguments of the streamed corpora
STREAMED = {
    "fineweb-edu": {"path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT", "split": "train"},
    "openwebtext": {"path": "Skylion007/openwebtext", "split": "train"},
}
KNOWN_DATASETS = ("pystdlib", "shakespeare", *STREAMED)
PROGRESS_FILE = "progress.json"
STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
TASK_CHARS = 1 << 18  # text per task sent to a tokenizer worker: large enough that pickling is cheap


def default_workers() -> int:
    return os.cpu_count() or 1


def _glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard: "books/**/*.txt" -> "books"."""
    fixed = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.path.abspath(os.path.join(*fixed)) if fixed else os.path.abspath(".")


def dataset_name(dataset: str) -> str:
    """The folder name under data/ for a --dataset value: a known name as it is, a file by its stem, a folder or
    glob by its folder's name."""
    if dataset in KNOWN_DATASETS:
        return dataset
    if os.path.isfile(dataset):
        return Path(dataset).stem
    return Path(_glob_root(dataset)).name or "corpus"


# ---------------------------------------------------------------------------------------------------------- reading

def hash_files(paths: list[str], root: str) -> str:
    """One hash over the files' names (relative to root) and contents, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(f"{os.path.relpath(path, root)}\0{sha256_file(path)}\n".encode())
    return h.hexdigest()


def read_utf8(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GPTCoreError(f"{path} is not UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}): "
                           "convert it, e.g. `iconv -f latin1 -t utf-8`, or leave it out") from None


def read_python_source(path: str) -> str:
    """A .py file decoded as the interpreter would: by its PEP 263 coding line, UTF-8 if it has none."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding)
    except (SyntaxError, UnicodeDecodeError, LookupError) as e:
        raise GPTCoreError(f"{path} cannot be decoded as Python source ({e}): leave it out") from None


def read_jsonl(path: str) -> list[str]:
    """The "text" field of each non-blank line."""
    texts = []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise GPTCoreError(f"{path}:{number} is not valid JSON ({e.msg}): fix or remove that line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise GPTCoreError(f"{path}:{number} has no string field \"text\": each line must be like "
                               '{"text": "..."}')
        texts.append(row["text"])
    return texts


def stdlib_files() -> tuple[str, list[str]]:
    """(stdlib folder, its .py files without tests and site-packages), sorted."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in STDLIB_SKIP_DIRS)
        files += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".py") and not n.startswith("test_")]
    if not files:
        raise GPTCoreError(f"found no .py files in this Python's standard library at {root}: "
                           "pass --dataset shakespeare or a PATH instead")
    return root, files


def _expand(path: str) -> tuple[str, list[str]]:
    """(glob pattern, sorted absolute paths of the files it matches) for a folder (all files under it) or a glob."""
    pattern = os.path.join(glob.escape(path), "**", "*") if os.path.isdir(path) else path
    return pattern, sorted(os.path.abspath(f) for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))


def local_files(path: str) -> tuple[str, list[str]]:
    """(root for relative names, sorted files) of a local --dataset PATH: a file, a folder or a glob."""
    if os.path.isfile(path):
        return os.path.dirname(os.path.abspath(path)), [os.path.abspath(path)]
    pattern, found = _expand(path)
    files = [f for f in found if f.endswith((".txt", ".jsonl"))]
    if not files:
        raise GPTCoreError(f"found no .txt or .jsonl files at {path}")
    return _glob_root(pattern), files


def read_local_documents(files: list[str]) -> list[str]:
    docs = []
    for path in files:
        if path.endswith(".jsonl"):
            docs += read_jsonl(path)
        elif path.endswith(".py"):
            docs.append(read_python_source(path))
        else:
            docs.append(read_utf8(path))
    return docs


def download_shakespeare(path: str, offline: str = "--from FILE") -> str:
    """tinyshakespeare's text, downloaded once into path (sha256-checked; a later call reads the file there).
    offline: the flag that passes a local copy instead, for the error message."""
    download(SHAKESPEARE_URL, path, SHAKESPEARE_SHA256,
             hint=f"; offline, pass a local copy with {offline}, e.g. ../shared/data/tinyshakespeare.txt")
    return read_utf8(path)


# ------------------------------------------------------------------------------------------------------- tokenizing

def encode_document(tokenizer, text: str) -> np.ndarray:
    """A document's tokens followed by the end-of-text token, as uint16. Special-token text counts as plain text."""
    if isinstance(tokenizer, GPT2Tokenizer):
        # tiktoken's numpy output skips making a Python int per token: ~15% less time than encode_ordinary
        ids = tokenizer.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    else:
        ids = tokenizer.encode(text)
    tokens = np.empty(len(ids) + 1, dtype=np.uint16)
    tokens[:-1] = ids
    tokens[-1] = tokenizer.eot_token
    return tokens


_worker_tokenizer = None


def _init_worker(description: dict):
    global _worker_tokenizer
    if _worker_tokenizer is None:
        _worker_tokenizer = tokenizer_from_description(description)


def _encode_in_worker(texts: list[str]) -> list[np.ndarray]:
    return [encode_document(_worker_tokenizer, text) for text in texts]


def _text_batches(texts: Iterable[str], chars: int) -> Iterator[list[str]]:
    """Consecutive texts grouped into lists of about `chars` characters (at least one text each)."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def tokenize_documents(texts: Iterable[str], tokenizer, workers: int) -> Iterator[np.ndarray]:
    """Each text's tokens plus end-of-text, in order, by a pool of `workers` processes (in this one if workers <= 1).

    Texts go to the pool in batches of about TASK_CHARS characters, with at most 2 batches per worker in flight:
    Pool.imap would read the whole input ahead, and a streamed corpus is larger than memory. A script that calls
    this with workers > 1 needs an `if __name__ == "__main__":` guard, since macOS and Windows start workers by
    importing the main module again.
    """
    if workers <= 1:
        yield from (encode_document(tokenizer, text) for text in texts)
        return
    global _worker_tokenizer
    # Forked workers inherit this tokenizer (building GPT-2's takes ~0.4 s); spawned ones build their own.
    _worker_tokenizer = tokenizer
    try:
        with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(tokenizer.describe(),)) as pool:
            in_flight = deque()
            for batch in _text_batches(texts, TASK_CHARS):
                in_flight.append(pool.apply_async(_encode_in_worker, (batch,)))
                if len(in_flight) > 2 * workers:
                    yield from in_flight.popleft().get()
            while in_flight:
                yield from in_flight.popleft().get()
    finally:
        _worker_tokenizer = None


def make_tokenizer(name: str, docs: list[str] | None):
    if name not in TOKENIZERS:
        raise GPTCoreError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    if name == "gpt2":
        return get_tokenizer("gpt2")
    if docs is None:
        raise GPTCoreError("the char tokenizer needs the whole corpus to build its alphabet, so it works only for "
                           "local corpora: use --tokenizer gpt2 for streamed ones")
    tokenizer = CharTokenizer.from_text("".join(docs))
    if tokenizer.n_vocab > 65536:
        raise GPTCoreError(f"the corpus has {tokenizer.n_vocab - 1} distinct characters, too many for uint16 "
                           "token shards: use --tokenizer gpt2")
    return tokenizer


def token_bar(initial: int = 0) -> tqdm:
    return tqdm(unit="tok", unit_scale=True, initial=initial, desc="tokenizing", smoothing=0.1)


# ---------------------------------------------------------------------------------------------------------- writing

def local_options(tokenizer: str, val_fraction: float, shard_tokens: int) -> dict:
    """The options that shape a local corpus's shards; meta.json records them, and a rerun compares them."""
    return {"tokenizer": tokenizer, "val_fraction": val_fraction, "shard_tokens": shard_tokens,
            "split_seed": SPLIT_SEED, "val_split": "last val_fraction of the tokens, documents shuffled"}


def streamed_options(tokenizer: str, shard_tokens: int) -> dict:
    return {"tokenizer": tokenizer, "shard_tokens": shard_tokens, "val_split": "first shard"}


def _matching_record(path: str, input_hash: str, options: dict, shard_names) -> dict | None:
    """The JSON record at path (meta.json or progress.json) if it was written for these inputs and options and the
    shards it lists (shard_names(record)) are intact; else None."""
    try:
        with open(path) as f:
            record = json.load(f)
        if (record["input_hash"], record["options"]) != (input_hash, options):
            return None
        for name in shard_names(record):
            shard_token_count(os.path.join(os.path.dirname(path), name))
    except (OSError, GPTCoreError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return record


def prepared_meta(out_dir: str, input_hash: str, options: dict) -> dict | None:
    """The meta.json in out_dir if it holds this exact dataset (same inputs and options) with intact shards."""
    meta = _matching_record(os.path.join(out_dir, META_FILE), input_hash, options,
                            lambda m: m["train_shards"] + m["val_shards"])
    return meta if meta and meta.get("format_version") == FORMAT_VERSION else None


def _clear(out_dir: str, keep_progress: bool = False):
    """Removes what an earlier prepare left in out_dir: meta first, so no reader trusts a half-rewritten folder."""
    patterns = [META_FILE, "*.tmp"] + ([] if keep_progress else [PROGRESS_FILE, "train_*.bin", "val_*.bin"])
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(glob.escape(out_dir), pattern))):
            os.remove(path)


def _write_split(out_dir: str, split: str, tokens: np.ndarray, shard_tokens: int) -> list[str]:
    names = []
    for index, start in enumerate(range(0, len(tokens), shard_tokens)):
        names.append(shard_name(split, index))
        write_shard(os.path.join(out_dir, names[-1]), tokens[start:start + shard_tokens])
    return names


def _meta(name, source, input_hash, options, tok, documents, train_shards, val_shards, train_tokens, val_tokens):
    return {"format_version": FORMAT_VERSION, "dataset": name, "source": source, "input_hash": input_hash,
            "options": options, "tokenizer": tok.describe(), "vocab_size": tok.n_vocab, "eot_token": tok.eot_token,
            "documents": documents, "train_tokens": train_tokens, "val_tokens": val_tokens,
            "train_shards": train_shards, "val_shards": val_shards}


def prepare_local(docs: list[str], *, name: str, source: str, input_hash: str, out_dir: str, tokenizer: str,
                  val_fraction: float, shard_tokens: int, workers: int) -> dict:
    """Tokenizes in-memory documents into train and val shards in out_dir, replacing what it held; returns the meta.

    Val is the last val_fraction of the tokens, after the documents are shuffled with SPLIT_SEED.
    """
    tok = make_tokenizer(tokenizer, docs)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(docs))
    pieces = []
    with token_bar() as bar:
        for tokens in tokenize_documents((docs[i] for i in order), tok, workers):
            pieces.append(tokens)
            bar.update(len(tokens))
    tokens = np.concatenate(pieces)
    n_val = int(round(len(tokens) * val_fraction))
    if not 0 < n_val < len(tokens):
        raise GPTCoreError(f"a val fraction of {val_fraction} of {len(tokens)} tokens leaves an empty split: "
                           "pick --val-fraction strictly between 0 and 1 (default 0.1), or use a larger corpus")
    _clear(out_dir)  # only now: a corpus that fails a check above leaves what out_dir held untouched
    meta = _meta(name, source, input_hash, local_options(tokenizer, val_fraction, shard_tokens), tok, len(docs),
                 train_shards=_write_split(out_dir, "train", tokens[:-n_val], shard_tokens),
                 val_shards=_write_split(out_dir, "val", tokens[-n_val:], shard_tokens),
                 train_tokens=len(tokens) - n_val, val_tokens=n_val)
    write_meta(out_dir, meta)
    return meta


def _read_progress(out_dir: str, input_hash: str, options: dict) -> dict | None:
    """The saved progress of an interrupted run with the same inputs and options, if its shards are still there."""
    return _matching_record(os.path.join(out_dir, PROGRESS_FILE), input_hash, options, lambda p: p["shards"])


def streamed_shard_name(index: int) -> str:
    """The first shard of a streamed corpus is val, the others train."""
    return shard_name("val", 0) if index == 0 else shard_name("train", index - 1)


def prepare_streamed(load_args: dict, *, name: str, source: str, input_hash: str, out_dir: str, tokenizer: str,
                     shard_tokens: int, workers: int) -> dict:
    """Streams documents (their field "text") from `datasets.load_dataset(**load_args, streaming=True)` into
    shards of shard_tokens tokens, written one by one; returns the meta. Continues an interrupted run.

    A document may run over from one shard into the next. progress.json, rewritten after each shard, holds the
    shards written, the index of the next document and how many of its tokens are already in a shard.
    """
    options = streamed_options(tokenizer, shard_tokens)
    tok = make_tokenizer(tokenizer, None)
    import datasets  # slow to import, and only this path needs it
    try:
        stream = datasets.load_dataset(**load_args, streaming=True)
    except Exception as e:  # network, hub and file errors each have their own type
        raise GPTCoreError(f"could not open {source} with Hugging Face datasets ({type(e).__name__}: {e}); "
                           "offline, pass local .jsonl or .parquet files with --from") from None
    progress = _read_progress(out_dir, input_hash, options)
    if progress:
        print(f"resuming after {len(progress['shards'])} complete shards "
              f"({sum(progress['shard_tokens']):,} tokens)")
        _clear(out_dir, keep_progress=True)
    else:
        _clear(out_dir)
        progress = {"input_hash": input_hash, "options": options, "shards": [], "shard_tokens": [], "next_doc": 0,
                    "skip_tokens": 0}
    if progress["next_doc"]:
        stream = stream.skip(progress["next_doc"])

    buffer = np.empty(shard_tokens, dtype=np.uint16)
    filled = 0

    def flush(next_doc: int, skip_tokens: int):
        shard = streamed_shard_name(len(progress["shards"]))
        write_shard(os.path.join(out_dir, shard), buffer[:filled])
        progress["shards"].append(shard)
        progress["shard_tokens"].append(filled)
        progress["next_doc"], progress["skip_tokens"] = next_doc, skip_tokens
        write_json(os.path.join(out_dir, PROGRESS_FILE), progress)

    doc, skip = progress["next_doc"], progress["skip_tokens"]
    with token_bar(sum(progress["shard_tokens"])) as bar:
        for tokens in tokenize_documents((row["text"] for row in stream), tok, workers):
            written, skip = skip, 0
            while written < len(tokens):
                take = min(shard_tokens - filled, len(tokens) - written)
                buffer[filled:filled + take] = tokens[written:written + take]
                filled += take
                written += take
                bar.update(take)
                if filled == shard_tokens:
                    flush(*((doc + 1, 0) if written == len(tokens) else (doc, written)))
                    filled = 0
            doc += 1
        if filled:
            flush(doc, 0)
    sizes = progress["shard_tokens"]
    if len(sizes) < 2:
        raise GPTCoreError(f"{source} gave only {sum(sizes)} tokens, not more than one shard of "
                           f"--shard-tokens {shard_tokens}, so there is no train split: lower --shard-tokens")
    meta = _meta(name, source, input_hash, options, tok, doc, train_shards=progress["shards"][1:],
                 val_shards=progress["shards"][:1], train_tokens=sum(sizes[1:]), val_tokens=sizes[0])
    write_meta(out_dir, meta)
    os.remove(os.path.join(out_dir, PROGRESS_FILE))
    return meta


# -------------------------------------------------------------------------------------------------------- the entry

def streamed_files(path: str) -> tuple[str, list[str]]:
    """(datasets builder, files) for --from of a streamed corpus: a .jsonl/.json or .parquet file, folder or glob."""
    _, files = _expand(path)
    kinds = {"json" if f.endswith((".jsonl", ".json")) else "parquet" if f.endswith(".parquet") else None
             for f in files}
    if not files or None in kinds or len(kinds) > 1:
        raise GPTCoreError(f"--from {path} must be .jsonl/.json files or .parquet files (one kind) with a field "
                           '"text"; found ' + (", ".join(os.path.basename(f) for f in files[:5]) or "nothing"))
    return kinds.pop(), files


def _looks_like_path(dataset: str) -> bool:
    """Whether a --dataset value that names nothing was meant as a path rather than a dataset name."""
    return ("/" in dataset or os.sep in dataset or dataset.startswith((".", "~"))
            or dataset.endswith((".txt", ".jsonl", ".json", ".parquet")) or glob.has_magic(dataset))


def prepare(dataset: str = DEFAULT_DATASET, *, out_dir: str, source_file: str | None = None,
            tokenizer: str = DEFAULT_TOKENIZER, val_fraction: float = DEFAULT_VAL_FRACTION,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int | None = None) -> tuple[dict, bool]:
    """Prepares `dataset` (a known name or a local path) into out_dir. Returns (meta, whether it did any work):
    when out_dir already holds the same inputs prepared with the same options, it does nothing.

    source_file: for shakespeare, a local copy of tinyshakespeare; for fineweb-edu and openwebtext, local .jsonl or
    .parquet files (a file, folder or glob) read through the same streaming code path as the download.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise GPTCoreError(f"--workers must be at least 1 (1: tokenize in this process), got {workers}")
    if not out_dir:
        raise GPTCoreError("--out-dir is empty: give a folder, or leave the flag out for data/<name>/")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise GPTCoreError(f"--out-dir {out_dir} is a file, not a folder: give a folder for the shards")
    if shard_tokens < 1:
        raise GPTCoreError(f"--shard-tokens must be at least 1, got {shard_tokens}")
    if not 0 < val_fraction < 1:
        raise GPTCoreError(f"--val-fraction must be strictly between 0 and 1, got {val_fraction}")
    if source_file is not None and dataset not in ("shakespeare", *STREAMED):
        raise GPTCoreError(f"--from is for shakespeare, {', '.join(STREAMED)}; pass a local corpus as --dataset PATH")
    if source_file is not None and not glob.glob(source_file, recursive=True):
        raise GPTCoreError(f"--from {source_file}: no such file")
    common = {"name": dataset_name(dataset), "out_dir": out_dir, "tokenizer": tokenizer,
              "shard_tokens": shard_tokens, "workers": workers}

    if dataset in STREAMED:
        if source_file is None:
            args = STREAMED[dataset]
            source = "huggingface " + " ".join(f"{k}={v}" for k, v in args.items())
            input_hash = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()
        else:
            builder, files = streamed_files(source_file)
            args = {"path": builder, "data_files": files, "split": "train"}
            source = f"{len(files)} local {builder} files at {os.path.abspath(source_file)}"
            input_hash = hash_files(files, os.path.commonpath([os.path.dirname(f) for f in files]))
        meta = prepared_meta(out_dir, input_hash, streamed_options(tokenizer, shard_tokens))
        return (meta, False) if meta else (prepare_streamed(args, source=source, input_hash=input_hash, **common), True)

    # read_docs runs only after the check for a prepared folder, so a rerun reads (or downloads) nothing
    if dataset == "shakespeare":
        # The hash of tinyshakespeare is known, so a rerun finds it prepared without downloading it again.
        input_hash = SHAKESPEARE_SHA256
        if source_file is None:
            source, read_docs = SHAKESPEARE_URL, lambda: [download_shakespeare(os.path.join(out_dir, "input.txt"))]
        elif sha256_file(source_file) != SHAKESPEARE_SHA256:
            raise GPTCoreError(f"{source_file} is not tinyshakespeare (its sha256 is not {SHAKESPEARE_SHA256}); "
                               "to prepare another text, pass it as --dataset PATH")
        else:
            source, read_docs = os.path.abspath(source_file), lambda: [read_utf8(source_file)]
    elif dataset == "pystdlib":
        root, files = stdlib_files()
        source = f"Python {sys.version.split()[0]} standard library at {root} ({len(files)} .py files, no tests)"
        input_hash = hash_files(files, root)
        read_docs = partial(read_local_documents, files)
    elif os.path.exists(dataset) or glob.glob(dataset, recursive=True):
        root, files = local_files(dataset)
        source = f"{len(files)} local files at {os.path.abspath(dataset)}"
        input_hash = hash_files(files, root)
        read_docs = partial(read_local_documents, files)
    elif _looks_like_path(dataset):
        raise GPTCoreError(f"--dataset {dataset}: no such file or folder (a relative path is relative to the "
                           f"working directory, {os.getcwd()})")
    else:
        raise GPTCoreError(f"unknown dataset {dataset!r}: known names are {', '.join(KNOWN_DATASETS)}; "
                           "or give the path of a text file, or a folder or glob of .txt/.jsonl files")
    meta = prepared_meta(out_dir, input_hash, local_options(tokenizer, val_fraction, shard_tokens))
    if meta:
        return meta, False
    return prepare_local(read_docs(), source=source, input_hash=input_hash, val_fraction=val_fraction, **common), True
