"""Atomic file writes: a file appears under its final name complete, or not at all. Checked downloads, the same way."""

import hashlib
import json
import os
import tempfile
import urllib.request
from contextlib import contextmanager

from tqdm import tqdm

from .errors import GPTCoreError


@contextmanager
def atomic_path(path: str):
    """Yields a temp path beside `path`; renames it onto `path` only when the block finishes without error."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; the result should look like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj, **dump_kwargs):
    """json.dump(obj, **dump_kwargs) to path, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, **dump_kwargs)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def git_blob_id(path: str) -> str:
    """The id git gives the file's content: SHA-1 of b"blob <size>\\0" + content. Some sources publish no sha256,
    but the repository they come from records this id for every file."""
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def digest_ok(path: str, sha256: str | tuple[str, ...], git_blob: str | None = None) -> bool:
    """Whether the file's sha256 is the one (or one of those) given, or else its git blob id is git_blob."""
    accepted = (sha256,) if isinstance(sha256, str) else sha256
    return sha256_file(path) in accepted or (git_blob is not None and git_blob_id(path) == git_blob)


def download(url: str, path: str, sha256: str | tuple[str, ...], hint: str = "", timeout: float = 60,
             git_blob: str | None = None) -> str:
    """url's bytes saved at path, checked against their known digest; returns path.

    sha256 is the expected digest, or a tuple of accepted ones; git_blob, where given, is accepted too (see
    git_blob_id). A file already at path that passes the check is used as it is, so only the first call downloads.
    The bytes go to a temp file beside path and are renamed onto path only when the check passes: path never holds
    a partial or wrong file. A failed download or a wrong digest raises GPTCoreError, with hint appended (say how
    to proceed offline).
    """
    if os.path.exists(path) and digest_ok(path, sha256, git_blob):
        return path
    expected = sha256 if isinstance(sha256, str) else sha256[0]
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(path)}") as bar:
                    while chunk := response.read(1 << 20):
                        f.write(chunk)
                        bar.update(len(chunk))
            if not digest_ok(tmp, sha256, git_blob):
                raise GPTCoreError(f"the download from {url} has sha256 {sha256_file(tmp)}, not the expected "
                                   f"{expected}; nothing was saved{hint}")
    except OSError as e:
        raise GPTCoreError(f"could not download {url} ({e}){hint}") from None
    return path
