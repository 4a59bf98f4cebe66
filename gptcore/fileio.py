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


def download(url: str, path: str, sha256: str, hint: str = "", timeout: float = 60) -> str:
    """url's bytes saved at path, checked against their known sha256; returns path.

    A file already at path with that sha256 is used as it is, so only the first call downloads. The bytes go to a
    temp file beside path, hashed as they arrive, and are renamed onto path only when the digest matches: path never
    holds a partial or wrong file. A failed download or a wrong digest raises GPTCoreError, with hint appended
    (say how to proceed offline).
    """
    if os.path.exists(path) and sha256_file(path) == sha256:
        return path
    h = hashlib.sha256()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=f"downloading {os.path.basename(path)}") as bar:
                while chunk := response.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
                    bar.update(len(chunk))
            if h.hexdigest() != sha256:
                raise GPTCoreError(f"the download from {url} has sha256 {h.hexdigest()}, not the expected {sha256}; "
                                   f"nothing was saved{hint}")
    except OSError as e:
        raise GPTCoreError(f"could not download {url} ({e}){hint}") from None
    return path
