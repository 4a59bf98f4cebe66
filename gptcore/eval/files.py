"""Where each task's data file comes from, how it is checked, and how its lines are read.

A task's file is looked for, in order:
1. in --data-dir, when given (and only there: a missing file is an error that says where to get it);
2. in ../shared/data next to the repository (the offline copies this project is developed with);
3. in the cache, ~/.cache/gptcore/eval (or $GPTCORE_CACHE/eval), where it is downloaded once if absent.
Every file is checked against the digests below before it is read; a download is checked before it is kept.

HellaSwag: the shared copy is the validation set with the raw file's [header]/[title]/[step] markers cleaned out
(same fields, scores differ slightly). Its sha256 is pinned. The canonical download is the raw file from the
HellaSwag repository; no sha256 of it is published, so it is pinned by its git blob id (a SHA-1 of its content,
which the repository itself records).
"""

import json
import os
from dataclasses import dataclass

from ..errors import GPTCoreError
from ..fileio import digest_ok, download, sha256_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


@dataclass(frozen=True)
class DataFile:
    name: str
    url: str
    sha256: tuple[str, ...]  # accepted sha256 digests
    git_blob: str | None = None  # accepted git blob id (SHA-1 of b"blob <size>\0" + content), where no sha256 is known


FILES = {
    "hellaswag": DataFile(
        "hellaswag_val.jsonl", "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl",
        ("782ebb456f0503d6858c8413074e8e567df9f1930515157b5ec5e3b13d24eed7",),  # the cleaned shared copy
        git_blob="0f5ee25d72216f12317d5d8a7b92deafa423d81e"),  # rowanz/hellaswag data/hellaswag_val.jsonl
    "lambada": DataFile(
        "lambada_openai.jsonl", "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
        ("4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226",)),
    "wikitext2": DataFile(
        "wikitext2_test.txt",  # wiki.test.tokens of WikiText-2 (v1, tokenized, with <unk>), as PyTorch's examples keep it
        "https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/test.txt",
        ("d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",)),
}


def cache_dir() -> str:
    base = os.environ.get("GPTCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "gptcore")
    return os.path.join(base, "eval")


def task_file(task: str, data_dir: str | None = None, verify: bool = True) -> str:
    """The checked local path of a task's data file (downloading it into the cache if needed; see module doc).
    verify=False skips the digest check, to score a copy of your own (its lines are still checked)."""
    spec = FILES[task]
    if data_dir is not None:
        path = os.path.join(data_dir, spec.name)
        if not os.path.isfile(path):
            raise GPTCoreError(f"{task}: no {spec.name} in --data-dir {data_dir}; download it from {spec.url} "
                               "(or leave out --data-dir to download it into the cache)")
    elif os.path.isfile(os.path.join(SHARED_DATA, spec.name)):
        path = os.path.join(SHARED_DATA, spec.name)
    else:
        path = os.path.join(cache_dir(), spec.name)
        if not os.path.isfile(path):  # a download is checked before it is kept
            return download(spec.url, path, spec.sha256, git_blob=spec.git_blob,
                            hint=f"; offline, put {spec.name} in a folder and pass it as --data-dir")
    if not verify:
        return path
    if not digest_ok(path, spec.sha256, spec.git_blob):
        raise GPTCoreError(f"{path} has sha256 {sha256_file(path)}, not the expected "
                           f"{spec.sha256[0]}; it is not the {task} file gptcore scores (get it from {spec.url}, "
                           "or pass --skip-checksum to score it anyway)")
    return path


def read_jsonl(path: str, problem, limit: int | None = None) -> list[dict]:
    """The first `limit` records of a JSON-lines file (all if None). problem(record) -> None, or what is wrong
    with it; a bad line fails with its line number."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(records) >= limit:
                break
            try:
                record = json.loads(line)
                error = problem(record) if isinstance(record, dict) else "is not a JSON object"
            except json.JSONDecodeError as e:
                error = f"is not valid JSON ({e.msg})"
            if error:
                raise GPTCoreError(f"{path} line {number} {error}; the file is damaged or not this task's, "
                                   "get a fresh copy")
            records.append(record)
    return records
