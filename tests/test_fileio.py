"""gptcore.fileio: atomic writes and the checked download, on local file:// URLs (no network)."""

import hashlib
from pathlib import Path

import pytest

from gptcore import corpora, fileio
from gptcore.errors import GPTCoreError

SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture
def served(tmp_path):
    """A file to download, its file:// URL and its sha256 (from hashlib, not from fileio)."""
    source = tmp_path / "served.bin"
    source.write_bytes(bytes(range(256)) * 5000)  # 1.28 MB: more than one read of the download loop
    return source, source.as_uri(), hashlib.sha256(source.read_bytes()).hexdigest()


def test_download_saves_the_checked_bytes_once(tmp_path, served, monkeypatch):
    source, url, digest = served
    dest = tmp_path / "cache" / "file.bin"
    assert fileio.download(url, str(dest), digest) == str(dest)
    assert dest.read_bytes() == source.read_bytes()

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(fileio.urllib.request, "urlopen", offline)
    assert fileio.download(url, str(dest), digest) == str(dest)  # already there and intact: nothing fetched
    dest.write_bytes(b"damaged")
    with pytest.raises(GPTCoreError, match=r"could not download .*network is unreachable\); offline, do this"):
        fileio.download(url, str(dest), digest, hint="; offline, do this")  # a damaged copy is fetched again


def test_a_wrong_digest_keeps_nothing(tmp_path, served):
    _, url, digest = served
    dest = tmp_path / "file.bin"
    with pytest.raises(GPTCoreError, match=f"has sha256 {digest}, not the expected 0+; nothing was saved"):
        fileio.download(url, str(dest), "0" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served.bin"]  # no file, no temp file left behind
    dest.write_bytes(b"an older file")
    with pytest.raises(GPTCoreError):
        fileio.download(url, str(dest), "0" * 64)
    assert dest.read_bytes() == b"an older file"  # replaced only by a complete, checked download


def test_a_missing_source_is_one_clear_error(tmp_path):
    with pytest.raises(GPTCoreError, match="could not download file://"):
        fileio.download((tmp_path / "absent").as_uri(), str(tmp_path / "file.bin"), "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_shakespeare_goes_through_the_checked_download(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "SHAKESPEARE_URL", SHAKESPEARE.as_uri())
    dest = tmp_path / "input.txt"
    assert corpora.download_shakespeare(str(dest)) == SHAKESPEARE.read_text(encoding="utf-8")
    assert dest.read_bytes() == SHAKESPEARE.read_bytes()


def test_download_accepts_any_listed_digest_or_the_git_blob_id(tmp_path, served):
    source, url, digest = served
    data = source.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's id for the content (`git hash-object`)
    assert fileio.download(url, str(tmp_path / "a.bin"), ("0" * 64, digest)) == str(tmp_path / "a.bin")
    assert fileio.download(url, str(tmp_path / "b.bin"), "0" * 64, git_blob=blob) == str(tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == data
    with pytest.raises(GPTCoreError, match="nothing was saved"):
        fileio.download(url, str(tmp_path / "c.bin"), ("0" * 64,), git_blob="0" * 40)
