"""The README's ```python blocks run exactly as written, each in a fresh Python process.

Each block runs in its own empty folder that stands in for the repository root (the README's paths are relative
to it): `checkpoint/` links to the committed one, and `data/pystdlib` holds a small corpus that
`data/prepare.py` made there. A block that needs the internet is skipped with the reason; the OpenAI-client block
is run against a real `serve.py` on the port it names.
"""

import http.client
import io
import os
import re
import socket
import subprocess
import sys
import sysconfig
import time
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300

# code that downloads: OpenAI's weights by name (a local folder would be a path, not this bare name)
ONLINE = [(re.compile(r"""from_pretrained\(\s*["']gpt2(-medium|-large|-xl)?["']"""),
           "downloads OpenAI's GPT-2 weights from the Hugging Face Hub")]
SERVER = re.compile(r"""base_url="http://127\.0\.0\.1:(\d+)/v1", api_key="([^"]*)\"""")


def python_blocks() -> list[tuple[str, str]]:
    """(name, code) of every ```python block, named by the heading above it and its place under it."""
    blocks, heading, count = [], "top", {}
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        elif lines[i].strip() == "```python":
            end = lines.index("```", i + 1)
            count[heading] = count.get(heading, 0) + 1
            blocks.append((f"{heading} #{count[heading]}", "\n".join(lines[i + 1:end]) + "\n"))
            i = end
        i += 1
    return blocks


def code_only(source: str) -> str:
    """The block without its comments, so a comment that mentions a download is not taken for one."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.COMMENT]
    return tokenize.untokenize(tokens)


def corpus(size: int = 600_000) -> str:
    """The first files of this Python's standard library, up to about size characters: pystdlib in small."""
    stdlib, parts, total = Path(sysconfig.get_paths()["stdlib"]), [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if total >= size:
            break
    return "\n".join(parts)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder with data/pystdlib made by data/prepare.py from a small slice of the standard library."""
    root = tmp_path_factory.mktemp("readme-data")
    source = root / "stdlib.txt"
    source.write_text(corpus(), encoding="utf-8")
    out = root / "data" / "pystdlib"
    run = subprocess.run([sys.executable, str(ROOT / "data" / "prepare.py"), "--dataset", str(source),
                          "--out-dir", str(out)], capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    assert run.returncode == 0, run.stderr
    return root / "data"


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_healthy(server: subprocess.Popen, port: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"serve.py exited with {server.returncode}: {server.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"serve.py did not answer /health on port {port} within {seconds} s")


@pytest.mark.parametrize("name,code", python_blocks(), ids=[name for name, _ in python_blocks()])
def test_readme_block_runs(name, code, prepared, tmp_path):
    plain = code_only(code)
    for pattern, why in ONLINE:
        if match := pattern.search(plain):
            pytest.skip(f"README block '{name}' needs the internet: `{match.group(0)})` {why}")
    (tmp_path / "checkpoint").symlink_to(ROOT / "checkpoint", target_is_directory=True)
    (tmp_path / "data").symlink_to(prepared, target_is_directory=True)

    server = None
    if match := SERVER.search(plain):
        pytest.importorskip("openai", reason=f"README block '{name}' uses the openai client, not installed")
        port, key = int(match.group(1)), match.group(2)
        if not port_free(port):
            pytest.skip(f"README block '{name}' talks to a server on port {port}, which is taken on this machine")
        server = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--port", str(port), "--api-key", key,
                                   "--dtype", "float32"], cwd=tmp_path, env=env(), text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if server is not None:
            wait_healthy(server, port)
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True,
                             timeout=TIMEOUT)
    finally:
        if server is not None:
            server.terminate()
            server.communicate(timeout=30)
    assert run.returncode == 0, f"README block '{name}' failed:\n{code}\n--- stderr:\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
