"""Serve a model over HTTP: `python serve.py [--checkpoint PATH | --pretrained NAME] [--port 8000] [options]`.

OpenAI's API (POST /v1/completions, POST /v1/chat/completions, GET /v1/models, streaming with stream: true) and a
chat page at http://127.0.0.1:8000/. The model is found as in sample.py: --checkpoint, --pretrained, else the
committed checkpoint in checkpoint/. Running requests are decoded together, up to --max-batch rows, and a new one
joins them at the next step; beyond --max-queue waiting rows the server answers 503 at once.
"""

import argparse
import logging
import os
import sys

import torch
import uvicorn

from gptcore.checkpoint import load_model
from gptcore.device import default_device
from gptcore.errors import GPTCoreError
from gptcore.infer import Generator
from gptcore.infer.engine import QUANTIZE
from gptcore.serve.app import DEFAULT_TIMEOUT, create_app
from gptcore.serve.batcher import MAX_BATCH, MAX_QUEUE, Scheduler, default_threads

COMMITTED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH", help="a gptcore .pt file, or an out dir (its newest checkpoint)")
    source.add_argument("--pretrained", metavar="NAME_OR_DIR", help="OpenAI GPT-2 in the Hugging Face format")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                        help="auto: the fastest of float32 and bfloat16 here for a full batch (--max-batch rows), "
                             "measured once (bfloat16 on GPUs)")
    parser.add_argument("--quantize", choices=QUANTIZE, default=None,
                        help="int8: weight-only int8 (per-channel scales); slightly lossy (default: off)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default: 8000)")
    parser.add_argument("--api-key", metavar="KEY", default=None,
                        help="require 'Authorization: Bearer KEY' on /v1 requests (default: no key)")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH,
                        help=f"rows (prompts x n) decoded together in each step (default: {MAX_BATCH})")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE,
                        help=f"rows waiting beyond a full batch before requests get 503 (default: {MAX_QUEUE})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds a request may take, queue included, before a 504 (default: {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch threads for the model's math (default: all cores but one, left to the HTTP side: "
                             f"{default_threads()} here)")
    args = parser.parse_args(argv)
    if args.max_batch < 1:
        raise GPTCoreError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_queue < 0:
        raise GPTCoreError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.threads < 1:
        raise GPTCoreError(f"--threads must be >= 1, got {args.threads}")
    if not args.timeout > 0:
        raise GPTCoreError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if not 0 <= args.port < 65536:
        raise GPTCoreError(f"--port must be in [0, 65535], got {args.port}")
    return args


def model_name(source: str | None) -> str:
    """The id clients send as `model`: the checkpoint's or pretrained model's name."""
    if source is None:
        return "gpt2-untrained"
    return os.path.splitext(os.path.basename(source.rstrip("/\\")))[0]


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)  # before the engine measures its fastest dtype, which depends on it
    model, tokenizer, source = load_model(args.checkpoint, args.pretrained, COMMITTED_DIR)
    model = model.to(args.device or default_device()).requires_grad_(False)  # served, never trained
    # auto: the dtype that decodes a full batch fastest, since concurrent requests are what a server is for
    engine = Generator(model, tokenizer, dtype=None if args.dtype == "auto" else args.dtype, quantize=args.quantize,
                       rows=args.max_batch)
    name = model_name(source)
    app = create_app(Scheduler(engine, args.max_batch, args.max_queue), name, args.api_key, args.timeout)
    weights = f"{str(engine.dtype).removeprefix('torch.')}{', int8 weights' if args.quantize else ''}"
    url = f"http://{args.host}:{args.port}"
    logging.getLogger("gptcore.serve").info(
        f"serving {source or 'an untrained GPT-2 124M'} as '{name}' on {engine.device}, {weights}; "
        f"up to {args.max_batch} rows a step, {args.threads} torch thread{'s' * (args.threads > 1)}; "
        f"chat page {url}/, OpenAI API {url}/v1")
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")


if __name__ == "__main__":
    try:
        main()
    except GPTCoreError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
