"""What the server tests share: tiny checkpoints and a real uvicorn server on a free loopback port."""

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager

import torch
import uvicorn

from gptcore import GPT, GPTConfig
from gptcore.checkpoint import load_model, model_checkpoint, save_checkpoint
from gptcore.infer import Generator
from gptcore.serve.app import create_app
from gptcore.serve.batcher import Scheduler
from gptcore.tokenizer import get_tokenizer


def tiny_checkpoint(path, block_size=64, seed=0):
    """A random 2-layer GPT with GPT-2's tokenizer, saved as a gptcore checkpoint. Its weights are large enough
    that greedy continuations vary with the prompt, so a mixed-up row would show."""
    torch.manual_seed(seed)
    tokenizer = get_tokenizer("gpt2")
    model = GPT(GPTConfig(block_size=block_size, vocab_size=tokenizer.n_vocab, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    save_checkpoint(str(path), model_checkpoint(model, tokenizer, step=0))
    return str(path)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def free_port() -> int:
    with free_socket() as sock:
        return sock.getsockname()[1]


@contextmanager
def running_server(checkpoint: str, name: str = "tiny", dtype: str = "float32", **options):
    """Serves the checkpoint (on the CPU, in float32) with uvicorn in a thread; yields (base url, scheduler).
    options go to Scheduler (max_batch, max_queue) and create_app (api_key, timeout)."""
    model, tokenizer, _ = load_model(checkpoint)
    engine = Generator(model.requires_grad_(False), tokenizer, dtype=dtype)
    scheduler = Scheduler(engine, **{k: options.pop(k) for k in ("max_batch", "max_queue") if k in options})
    app = create_app(scheduler, name, **options)
    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", scheduler
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def call(url: str, method: str, path: str, body: bytes | str | dict | None = None, headers: dict | None = None):
    """A raw HTTP request (any bytes as the body) -> (status, parsed JSON or text)."""
    host_port = url.split("//", 1)[1]
    conn = http.client.HTTPConnection(host_port, timeout=60)
    if isinstance(body, dict):
        body = json.dumps(body)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode("utf-8", "replace")
