"""serve.py and gptcore.serve: a real uvicorn server on a loopback port, spoken to by the official openai client
and by raw HTTP. Greedy output is checked against transformers' GPT2LMHeadModel and against sample.py."""

import collections
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import torch
import transformers

from gptcore.checkpoint import load_model
from gptcore.errors import GPTCoreError
from gptcore.serve.batcher import MAX_BATCH, default_threads
from gptcore.tokenizer import get_tokenizer
from serving import call, free_port, running_server, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The quick brown fox", "Once upon a time", "import numpy as np", "To be or not"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Context 8192: long requests (8000 tokens) are still running when a test disconnects or queues behind them."""
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt", block_size=8192)


@pytest.fixture(scope="module")
def server(ckpt):
    with running_server(ckpt, max_batch=4, max_queue=4) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def greedy(ckpt, tmp_path_factory):
    """prompt, n -> (text, prompt token count): the greedy continuation by transformers' GPT-2, the same weights."""
    model, tokenizer, _ = load_model(ckpt)
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(str(folder))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()

    @torch.no_grad()
    def run(prompt: str, n: int):
        ids = tokenizer.encode(prompt, allow_special=True)
        seq = torch.tensor([ids])
        for _ in range(n):
            seq = torch.cat([seq, hf(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        new = seq[0, len(ids):].tolist()
        assert tokenizer.eot_token not in new  # else this reference would have to stop early
        return tokenizer.decode(new), len(ids)
    return run


def raw_stream(url: str, body: dict, headers: dict | None = None) -> socket.socket:
    """Starts a streaming request on a bare socket and returns once its first event has arrived."""
    host, port = url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    data = json.dumps({**body, "stream": True}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{head}"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received
    return sock


def wait_for(predicate, what: str, seconds: float = 30):
    """Polls until predicate() is true; a bound so that a broken server fails the test instead of hanging it."""
    end = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


def health(url):
    status, body = call(url, "GET", "/health")
    assert status == 200
    return body


# ---- the openai client ----

def test_completion_is_transformers_greedy_with_usage(client, greedy):
    text, prompt_tokens = greedy(PROMPTS[0], 12)
    out = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    assert out.object == "text_completion" and out.model == "tiny"
    assert [c.text for c in out.choices] == [text]
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.total_tokens) == \
           (prompt_tokens, 12, prompt_tokens + 12)


def test_streamed_completion_adds_up_to_the_same_text(client, greedy):
    text, prompt_tokens = greedy(PROMPTS[1], 15)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=15, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0] for c in chunks if c.choices]
    assert len(pieces) > 1  # streamed, not one piece at the end
    assert "".join(p.text for p in pieces) == text
    assert [p.finish_reason for p in pieces] == [None] * (len(pieces) - 1) + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 15
    assert chunks[-1].usage.prompt_tokens == prompt_tokens


def test_stop_string_ends_the_text_before_it(client, greedy):
    text, _ = greedy(PROMPTS[2], 20)
    stop = text[len(text) // 2:len(text) // 2 + 3]
    expected = text[:text.index(stop)]
    out = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=20, temperature=0, stop=[stop])
    assert (out.choices[0].text, out.choices[0].finish_reason) == (expected, "stop")
    chunks = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=20, temperature=0, stop=stop,
                                       stream=True)
    pieces = [c.choices[0] for c in chunks]
    assert "".join(p.text for p in pieces) == expected and pieces[-1].finish_reason == "stop"


def test_chat_uses_the_documented_template(client, greedy):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "What is 2+2?"}]
    template = "You are terse.\n\nUser: Hi there\nAssistant: Hello.\nUser: What is 2+2?\nAssistant:"
    text, prompt_tokens = greedy(template, 10)
    expected = text.split("\nUser:")[0].lstrip()
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == expected
    assert out.choices[0].finish_reason == ("stop" if "\nUser:" in text else "length")
    assert out.usage.prompt_tokens == prompt_tokens
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_prompt_lists_token_ids_and_seeded_choices(client, greedy):
    out = client.completions.create(model="tiny", prompt=PROMPTS[:3], max_tokens=6, temperature=0)
    assert [c.text for c in out.choices] == [greedy(p, 6)[0] for p in PROMPTS[:3]]  # batched rows don't mix
    assert [c.index for c in out.choices] == [0, 1, 2]
    by_ids = client.completions.create(model="tiny", prompt=get_tokenizer("gpt2").encode(PROMPTS[0]), max_tokens=6,
                                       temperature=0)
    assert by_ids.choices[0].text == out.choices[0].text
    a, b = (client.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=8, temperature=1.0, n=2, seed=7)
            for _ in range(2))
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # same seed, same samples
    assert a.choices[0].text != a.choices[1].text  # but the n choices differ from each other
    assert a.usage.completion_tokens == 16


def test_models_health_and_page(server, client):
    url, _ = server
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert health(url)["status"] == "ok"
    status, page = call(url, "GET", "/")
    assert status == 200 and "<textarea" in page and "/static/chat.js" in page
    assert call(url, "GET", "/static/chat.js")[0] == 200


# ---- bad input: a 4xx naming the field, and the server goes on ----

BAD = [
    ({"prompt": "x", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 8192}, 400, "max_tokens"),  # 1 prompt token + 8192 > the context of 8192
    ({"prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "x", "top_k": 0}, 400, "top_k"),
    ({"prompt": "x", "n": 0}, 400, "n"),
    ({"prompt": "x", "n": 5}, 400, "n"),  # more rows than --max-batch
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"prompt": "x", "logprobs": 3}, 400, "logprobs"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": [[1, 2], 3]}, 400, "prompt"),
    ({"prompt": [50257]}, 400, "prompt"),  # not a token id
    ({"prompt": " a" * 8300}, 400, "prompt"),  # longer than the context
    ({"prompt": "x", "model": "gpt-4"}, 404, "model"),
    ({"max_tokens": 3}, 400, "prompt"),
]
BAD_CHAT = [
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ({"messages": [{"role": "user", "content": " a" * 8300}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8190}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -3}, 400, "max_completion_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": float("nan")}, 400, "temperature"),
]


def assert_error(status, body, expected_status, param):
    assert status == expected_status, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param and body["error"]["message"]


def assert_still_serving(client):
    out = client.completions.create(model="tiny", prompt="ok", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2


@pytest.mark.parametrize("fields, status, param", BAD)
def test_bad_completion_fields(server, client, fields, status, param):
    assert_error(*call(server[0], "POST", "/v1/completions", {"model": "tiny", **fields}), status, param)
    assert_still_serving(client)


@pytest.mark.parametrize("fields, status, param", BAD_CHAT)
def test_bad_chat_fields(server, client, fields, status, param):
    body = json.dumps({"model": "tiny", **fields}).encode()  # json.dumps writes NaN; JSON has no such thing
    assert_error(*call(server[0], "POST", "/v1/chat/completions", body), status, param)
    assert_still_serving(client)


@pytest.mark.parametrize("body, status", [
    (b"{not json", 400),
    (b'["a list"]', 400),
    ('{"model": "tiny", "prompt": "caf\u00e9"}'.encode("latin-1"), 400),  # not UTF-8
    (b'{"model": "tiny", "prompt": "' + b"a" * (2 << 20) + b'"}', 413),
])
def test_bad_bodies(server, client, body, status):
    assert_error(*call(server[0], "POST", "/v1/completions", body), status, "body")
    assert_still_serving(client)


def test_unknown_paths_and_methods_are_json_errors(server, client):
    status, body = call(server[0], "GET", "/v1/nothing")
    assert status == 404 and body["error"]["message"]
    status, body = call(server[0], "GET", "/v1/completions")
    assert status == 405 and body["error"]["message"]
    assert_still_serving(client)


# ---- concurrency, queueing, disconnects, timeouts, keys ----

def test_streams_join_a_running_batch_and_share_its_steps(server, client, greedy):
    """4 streams that arrive while a long request decodes join its batch (3 at once, the 4th when a row frees:
    max_batch is 4), share its steps, finish while it still runs, and each gets exactly what it would get alone."""
    url, scheduler = server
    blocker = raw_stream(url, {"model": "tiny", "prompt": "block", "max_tokens": 8000})
    before = collections.Counter({int(k): v for k, v in health(url)["step_rows"].items()})
    results = {}

    def stream(prompt):
        chunks = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, stream=True)
        results[prompt] = "".join(c.choices[0].text for c in chunks)

    threads = [threading.Thread(target=stream, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {p: greedy(p, 8)[0] for p in PROMPTS}
    assert health(url)["rows"] == 1  # only the blocker is left: nobody waited for it to finish
    after = collections.Counter({int(k): v for k, v in health(url)["step_rows"].items()})
    shared = after - before
    assert max(shared) <= 4 and sum(n for rows, n in shared.items() if rows >= 2) >= 8  # each stream's 8 tokens
    blocker.close()  # its row is cancelled at the next step
    wait_for(lambda: health(url)["rows"] == 0, "all rows freed")


def test_full_queue_answers_503_at_once_and_a_disconnect_frees_the_slot(ckpt, caplog):
    with running_server(ckpt, max_batch=1, max_queue=0) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        first = raw_stream(url, {"model": "tiny", "prompt": "long", "max_tokens": 8000})
        status, body = call(url, "POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert status == 503 and body["error"]["code"] == "overloaded"
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model="tiny", prompt="x", max_tokens=2)
        first.close()
        wait_for(lambda: health(url)["rows"] == 0, "the disconnected stream's slot to free")
        assert_still_serving(client)

        # a non-streamed request whose client leaves is cancelled too, logged as 499 with the tokens it got
        with caplog.at_level("INFO", logger="gptcore.serve"):
            sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
            data = json.dumps({"model": "tiny", "prompt": "bye", "max_tokens": 8000}).encode()
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            wait_for(lambda: health(url)["rows"] == 1 and health(url)["waiting"] == 0, "the request to start")
            sock.close()
            wait_for(lambda: any("(disconnected)" in r.message for r in caplog.records), "the disconnect log line")
        line = next(r.message for r in caplog.records if "(disconnected)" in r.message)
        assert " POST /v1/completions 499 " in line
        assert int(line.split("completion=")[1].split()[0]) < 8000
        wait_for(lambda: health(url)["rows"] == 0, "the slot to free")
        assert_still_serving(client)


def test_requests_time_out_with_504_and_free_their_rows(ckpt):
    with running_server(ckpt, max_batch=2, timeout=0.05) as (url, _):
        long = {"model": "tiny", "prompt": "slow", "max_tokens": 8000}  # far more than 50 ms of decoding
        status, body = call(url, "POST", "/v1/completions", long)
        assert status == 504 and body["error"]["code"] == "timeout"
        status, text = call(url, "POST", "/v1/completions", {**long, "stream": True})
        events = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]
        assert status == 200 and events[-1]["error"]["code"] == "timeout"
        wait_for(lambda: health(url)["rows"] == 0, "the timed-out rows to free")


def test_api_key(ckpt):
    with running_server(ckpt, api_key="s3cret") as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, body = call(url, "POST", "/v1/completions", {"model": "tiny", "prompt": "x"}, headers)
            assert_error(status, body, 401, "authorization")
        assert_error(*call(url, "GET", "/v1/models"), 401, "authorization")
        assert call(url, "GET", "/health")[0] == 200 and call(url, "GET", "/")[0] == 200  # no model access
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert_still_serving(openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0))


# ---- serve.py itself ----

def script(name):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py") + "_script", ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_greedy_equals_sample_py_on_the_committed_checkpoint(capsys):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "serve.py", "--port", str(port), "--dtype", "float32", "--device", "cpu"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, proc.stdout.read()
            try:
                return call(url, "GET", "/health")[0] == 200
            except OSError:
                return False
        wait_for(up, "serve.py to start", seconds=240)
        assert health(url)["model"] == "quickstart"
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        sample = script("sample.py")
        for prompt in ["def main():", "The king"]:
            out = client.completions.create(model="quickstart", prompt=prompt, max_tokens=60, temperature=0)
            sample.main(["-p", prompt, "-m", "60", "--temperature", "0", "--dtype", "float32", "--device", "cpu"])
            assert capsys.readouterr().out == prompt + out.choices[0].text + "\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # it says what it serves and where, before uvicorn's own lines
    threads = default_threads()
    assert f"serving {ROOT / 'checkpoint' / 'quickstart.pt'} as 'quickstart' on cpu, float32; up to {MAX_BATCH} rows " \
           f"a step, {threads} torch thread{'s' * (threads > 1)}; chat page {url}/, OpenAI API {url}/v1" \
           in proc.stdout.read()


def test_serve_flags_fail_with_one_line(capsys):
    serve = script("serve.py")
    for argv, needle in [(["--max-batch", "0"], "--max-batch"), (["--max-queue", "-1"], "--max-queue"),
                         (["--timeout", "0"], "--timeout"), (["--threads", "0"], "--threads"),
                         (["--port", "70000"], "--port"),
                         (["--checkpoint", "/nonexistent/x.pt"], "/nonexistent/x.pt")]:
        with pytest.raises(GPTCoreError, match=needle):
            serve.main(argv)
    with pytest.raises(SystemExit) as exit:
        serve.main(["--help"])
    assert exit.value.code == 0 and "--max-batch" in capsys.readouterr().out
    result = subprocess.run([sys.executable, "serve.py", "--max-batch", "0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == "error: --max-batch must be >= 1, got 0\n"
