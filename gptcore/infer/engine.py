"""Text generation: the engine that owns a model's inference weights and KV cache, batches requests and streams text.

The loop follows gpt-fast: a prompt goes through the model once (prefill), which fills its row of the cache the
engine owns (gptcore/infer/cache.py); after that each step feeds only the newest token of every running request,
in one batched forward, so no token recomputes the context before it. Prompts of different lengths share a batch:
each row has its own positions, and a batched prefill right-pads the shorter prompts (their padding is masked).

Context window. GPT-2's positions are learned and absolute, so cached keys cannot be shifted left once a sequence
outgrows block_size. The policy, per row:
  - a prompt longer than block_size keeps only its last block_size tokens as context;
  - when the next token no longer fits, the context restarts from the last max(1, block_size // 2) tokens,
    which are prefilled again. That is one prefill every block_size // 2 tokens, cheap amortized.
Recomputing that same window from scratch at every step gives the same greedy tokens (tests/test_generate.py).

Continuous batching. A Batch (Generator.batch) owns a fixed number of cache rows. Requests join it at any step
and leave it when they finish or are cancelled, which frees their row for the next one; a newcomer's prompt is
prefilled in its first step, in a forward of its own next to that step's decode forward. Generator.run is a Batch
that gets all its requests before the first step.

Weights. The engine runs the model itself when it is already in the requested dtype and nothing needs packing;
otherwise it keeps its own inference copy (converted to dtype, packed for oneDNN on CPUs, or int8), rebuilt
whenever the model's parameters change, so it never samples from stale weights. The engine imports nothing from
gptcore.model: it needs only model.config and forward(idx, cache=...).

Decode steps in C. On a CPU, an int8 or bf16 copy of a GPT-2 (OpenAI's module names) decodes through
native.DecodeStep where the kernel measurements choose it (cpu_kernels.int8_decode_kernel, bf16_decode_kernel):
one call of gptcore/infer/decode_step.c per step, on the same weights and the same cache. A prefill, and any model
of another layout, runs the model's forward. PyTorch's ~15 small ops per layer around the products cost as much
as the products themselves at batch 1 (4-6 ms a step on GPT-2 124M, 2 cores); in C the rest costs ~0.5 ms.

Compiled decode (gpt-fast's torch.compile of a step with static shapes: a fixed-size cache, tensor positions, a mask
buffer) was measured and is not used: it was slower, or no faster, on every path. GPT-2 124M on an Intel Xeon with
AMX (2 cores, torch 2.13, inductor's C++ backend), the compiled step against the eager one in one process,
interleaved, medians of ms per step: fp32 0.82x at batch 1 (0.83x with freezing; 0.47x at batch 8, on one thread);
int8 written in plain PyTorch so inductor could fuse the dequantization, 0.27x of eager fp32 without freezing, and
with freezing (its weight-only int8 pattern) and max_autotune's C++ GEMM templates, bf16 activations, 0.80-0.94x of
the eager FBGEMM int8 step at batch 1 and 0.32x at batch 8 (one thread); bf16 (C++ GEMM templates) no faster than
eager packed bf16. Compile time was 7-77 s per (rows, cache length) shape. The step's matrix products are already
library kernels, so compiling can only win the rest of the step, and inductor's own int8 and fp32 products ran
slower than FBGEMM's and MKL's here. (Measured while another process shared the cores: ratios only.) The C step
is what won the rest of the step back.
"""

import copy
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..device import generation_dtype
from ..errors import GPTCoreError
from . import cpu_kernels, native
from .cache import KVCache
from .quantize import quantize_int8
from .sampling import check_sampling, greedy_tokens, sample_next_token
from .text import TextStream

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}  # float64: for exact tests
QUANTIZE = ("int8",)
EOT = "eot"  # Request.stop_token's default: the tokenizer's <|endoftext|>, when there is a tokenizer


@dataclass
class Request:
    """One prompt to continue; see Generator.run."""
    ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    do_sample: bool = True  # False: greedy (temperature, top_k, top_p ignored)
    stop: Sequence[str] = ()  # stop strings (need a tokenizer); a matched one is not emitted
    seed: int | None = None  # a torch.Generator of its own: same seed, same tokens, whatever else is in the batch
    cancelled: bool = False  # may be set from another thread; the engine drops the request at its next step
    stop_token: int | str | None = EOT  # an id that stops this request; EOT: the tokenizer's; None: no stop token


@dataclass
class Event:
    """What one request produced in one step."""
    index: int  # which request: its position in the list given to run, or the handle Batch.add returned
    token: int | None  # the new token id (None on a final event that adds no token)
    text: str  # new text; never splits a UTF-8 character; holds back what could still become a stop string
    finish_reason: str | None  # None while running; then "stop" (stop token or string), "length" or "cancelled"


def parse_dtype(dtype) -> torch.dtype | None:
    """None, a torch.dtype among float32/bfloat16/float16/float64, or one of DTYPES' names -> a torch.dtype or None."""
    if dtype is None or dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise GPTCoreError(f"dtype must be one of {', '.join(DTYPES)} (or the torch dtype), got {dtype!r}")


CHECKSUM_STRIDE = 1031  # a prime a few cache lines wide: the checksum reads ~0.1% of the weights' memory


def weights_version(model) -> tuple:
    """Something that changes whenever a parameter is replaced, moved or modified in place.

    In-place ops bump a tensor's ._version, but not all of them (fused AdamW's doesn't), so a model that may be
    in training (some parameter requires grad) also gets a checksum of every parameter: of every CHECKSUM_STRIDE-th
    element, since an optimizer step moves them all. (Summing every element cost as much as 30 decode steps of
    GPT-2 124M, once per generate call.) An edit of single elements through .data, which bumps no version, can
    escape it: generate from a fresh Generator after such surgery.
    """
    params = list(model.parameters())
    meta = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    if not any(p.requires_grad for p in params):
        return meta, None
    with torch.no_grad():
        sample = [p.detach().reshape(-1)[::CHECKSUM_STRIDE].sum(dtype=torch.float64) for p in params]
        return meta, torch.stack(sample).tolist()


class _Row:
    """A running request: its ids so far, the window that is its context, and how much of it is cached."""

    def __init__(self, index: int, request: Request, row: int, block_size: int, stop_token, text: TextStream | None,
                 generator):
        self.index, self.request, self.row = index, request, row
        self.ids = list(request.ids)
        self.start = max(0, len(self.ids) - block_size)  # the context is ids[start:]
        self.cached = 0  # ids[start:start + cached] are in the cache
        self.new = 0
        self.stop_token, self.text, self.generator = stop_token, text, generator
        self.greedy = not request.do_sample or request.temperature == 0

    def pending(self, block_size: int) -> list[int]:
        """The ids to feed next: the whole window after a (re)start, else the newest token."""
        if len(self.ids) - self.start > block_size:
            self.start, self.cached = len(self.ids) - max(1, block_size // 2), 0
        return self.ids[self.start + self.cached:]


class Generator:
    """Generates from a GPT-like model: batched requests, streaming, stop strings, seeds, int8.

    model: anything with .config (block_size, vocab_size, n_layer, n_head, n_embd) and forward(idx, cache=...).
    tokenizer: for text (stream, stop strings); optional for ids in, ids out.
    dtype: float32, bfloat16 or float16 (or the torch dtype); default: the fastest exact one on the model's
        device, measured (device.generation_dtype).
    quantize: None, or "int8": weight-only int8 with per-output-channel scales, the output head included.
    rows: the rows a decode step will mostly run; on CPUs the default dtype is measured at that many. A server
        passes its batch size: on the project's AMX Xeon, packed bf16 tied fp32 at one row but scaled better with
        rows (bench_serve, committed checkpoint, 1 thread: 4 clients 3.04x one client's tok/s in bf16, 2.26x in
        fp32; aggregate 582 vs 530 tok/s at 4 clients, 863 vs 766 at 16, 212 vs 236 at 1).
    """

    def __init__(self, model, tokenizer=None, dtype=None, quantize=None, rows: int = 1):
        if quantize is not None and quantize not in QUANTIZE:
            raise GPTCoreError(f"quantize must be None or one of {', '.join(QUANTIZE)}, got {quantize!r}")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise GPTCoreError(f"rows must be an integer >= 1, got {rows!r}")
        self.rows = rows
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.dtype = parse_dtype(dtype) or generation_dtype(self.device, self._has_bf16_kernel(quantize))
        self.quantize = quantize
        self.block_size = model.config.block_size
        self._model = model
        self._runner, self._version = None, None
        self._native_step = None  # a native.DecodeStep of self._runner, where decode steps run in C
        self._caches = []  # caches no run is using; a run takes one and gives it back

    def _has_bf16_kernel(self, quantize) -> bool:
        """Whether this device has a kernel that streams bf16 weights faster than the float32 path, measured; with
        int8 weights, whether a decode step with bf16 activations has an int8 kernel of its own.

        int8 weights take bf16 activations where bf16 matmuls are faster (generation_dtype checks that): a decode
        step costs the same (FBGEMM's kernel converts its input to fp32 and back, ~1 us a product), while a prefill's
        products and attention run in bf16. On the project's Xeon with AMX (1 thread, interleaved, medians), int8
        with bf16 activations took 0.61x the time to first token of a 512-token prompt and decoded as fast (1.04x
        at batch 1, 0.99x at batch 8) as with fp32 activations."""
        if self.device.type != "cpu":
            return True
        if quantize == "int8":  # "converted" would convert the whole weight for every decode step
            return cpu_kernels.int8_decode_kernel("cpu", torch.bfloat16) != "converted"
        return cpu_kernels.bf16_decodes_faster(self.rows)

    @property
    def model(self):
        return self._model() if isinstance(self._model, weakref.ref) else self._model

    # ---- weights ----

    def _inference_model(self):
        """The module the steps run: the model itself when it needs no conversion, else a copy kept up to date:
        converted to the engine's dtype, then quantized (int8), or for bf16 on a CPU, whichever
        cpu_kernels.bf16_decode_kernel measured fastest: a decode step in C, or oneDNN's packed linears."""
        model = self.model
        bf16_kernel = None
        if self.device.type == "cpu" and self.dtype == torch.bfloat16 and not self.quantize:
            bf16_kernel = cpu_kernels.bf16_decode_kernel(self.rows)
        if not self.quantize and bf16_kernel in (None, "plain") and all(p.dtype == self.dtype
                                                                        for p in model.parameters()):
            return model
        version = weights_version(model)
        if self._runner is None or version != self._version:
            self._runner = self._native_step = None  # frees the stale copy before building the new one
            # the copy's parameters are converted as they are copied, so the model is never held twice in fp32
            memo = {id(p): torch.nn.Parameter(p.detach().to(self.dtype), requires_grad=False)
                    for p in model.parameters()}
            runner = copy.deepcopy(model, memo).eval()
            if self.quantize == "int8":
                quantize_int8(runner)
                if self.device.type == "cpu" and cpu_kernels.int8_decode_kernel("cpu", self.dtype) == "native":
                    self._native_step = self._decode_step(runner)
            elif bf16_kernel == "native":
                self._native_step = self._decode_step(runner)
            if bf16_kernel == "packed" or (bf16_kernel == "native" and self._native_step is None):
                cpu_kernels.pack_linears(runner)
            self._runner, self._version = runner, version
        return self._runner

    @staticmethod
    def _decode_step(runner):
        """A native.DecodeStep of the inference copy, or None where the model is not a GPT-2 (OpenAI's module
        names): its decode steps then run in PyTorch."""
        try:
            return native.DecodeStep(runner)
        except (AttributeError, ValueError):  # another model's layout or weights
            return None

    def _forward(self, model, rows: list["_Row"], inputs: list[list[int]], cache: KVCache):
        """One batched forward of each row's pending ids (right-padded) -> the logits (len(rows), vocab) of each
        row's last pending id."""
        T = max(len(ids) for ids in inputs)
        if T == 1 and self._native_step is not None and model is self._runner:
            logits = self._native_step([ids[0] for ids in inputs], [r.row for r in rows], [r.cached for r in rows],
                                       cache)
            return logits[:, :model.config.vocab_size]
        idx = torch.tensor([ids + [0] * (T - len(ids)) for ids in inputs], device=self.device)
        cache.bind([r.row for r in rows], [r.cached for r in rows], [len(ids) for ids in inputs])
        # the engine's dtype, not a caller's autocast, decides the precision
        with torch.autocast(self.device.type, enabled=False):
            if not model.training:
                return model(idx, cache=cache)[0][:, -1]
            try:  # someone's model in training: no dropout, and back to training mode at once
                model.eval()
                return model(idx, cache=cache)[0][:, -1]
            finally:
                model.train()

    def _take_cache(self, batch_size: int, max_len: int) -> KVCache:
        for cache in self._caches:
            if cache.fits(batch_size, max_len, self.dtype, self.device):
                self._caches.remove(cache)
                return cache
        if self._caches:  # grow: at least as large as the one it replaces
            old = self._caches.pop()
            batch_size, max_len = max(batch_size, old.batch_size), max(max_len, old.max_len)
        c = self.model.config
        return KVCache(c.n_layer, c.n_head, c.n_embd // c.n_head, batch_size, max_len, self.dtype, self.device)

    # ---- requests ----

    def _check(self, requests: list[Request]):
        if not requests:
            raise GPTCoreError("run() needs at least one Request")
        for i, r in enumerate(requests):
            self._check_request(r, f"request {i}")

    def _check_request(self, r: Request, name: str):
        vocab_size = self.model.config.vocab_size
        if not isinstance(r, Request):
            raise GPTCoreError(f"{name} is a {type(r).__name__}, not a gptcore.infer.Request")
        if not r.ids or not all(isinstance(t, int) and 0 <= t < vocab_size for t in r.ids):
            raise GPTCoreError(f"{name}: ids must be a non-empty list of token ids in [0, {vocab_size}) "
                               "(start from the tokenizer's eot_token for an empty prompt)")
        check_sampling(r.temperature, r.top_k, r.top_p, r.max_new_tokens, r.seed)
        stop = self._stop_token(r)
        if stop is not None and not (isinstance(stop, int) and 0 <= stop < vocab_size):
            raise GPTCoreError(f"{name}: stop_token must be a token id in [0, {vocab_size}), got {stop!r}")
        if isinstance(r.stop, str) or not all(isinstance(s, str) and s for s in r.stop):
            raise GPTCoreError(f"{name}: stop must be a list of non-empty strings, got {r.stop!r}")
        if r.stop and self.tokenizer is None:
            raise GPTCoreError("stop strings need a tokenizer: Generator(model, tokenizer)")

    def _positions(self, request: Request) -> int:
        """Cache positions a request's row needs: its context (at most block_size) plus its new tokens, capped at
        block_size (beyond it the window restarts, see the module doc)."""
        return min(self.block_size, min(len(request.ids), self.block_size) + request.max_new_tokens)

    def _stop_token(self, request: Request):
        if request.stop_token != EOT:
            return request.stop_token
        return None if self.tokenizer is None else self.tokenizer.eot_token

    def batch(self, rows: int, max_len: int | None = None) -> "Batch":
        """A Batch of `rows` cache rows, each holding max_len positions (default block_size, room for any request);
        requests join and leave it at any step. Close it (or use it in a with block) to give the cache back."""
        return Batch(self, rows, max_len or self.block_size)

    def run(self, requests: list[Request], generators: list | None = None) -> Iterator[list[Event]]:
        """Decodes all requests together, one batched forward per step; yields each step's events.

        Every request gets exactly one event with finish_reason set, its last. A request that finishes or is
        cancelled frees its row (no more compute for it). Prompts of different lengths are fine.
        generators: a torch.Generator per request to draw its samples from, instead of its seed.
        Requests are checked here, before the first step. For requests that arrive while others decode, use
        Generator.batch.
        """
        self._check(requests)
        return self._run(requests, generators)

    def _run(self, requests, generators):
        max_len = max(self._positions(r) for r in requests)
        with Batch(self, len(requests), max_len) as batch:
            for i, r in enumerate(requests):  # handles 0, 1, ...: each request's index in the list
                batch.add(r, generators[i] if generators else None)
            while batch:
                yield batch.step()

    def _sample(self, rows: list[_Row], logits) -> list[int]:
        """logits (B, V) -> one token per row: a batched argmax for greedy rows, a draw with each row's settings
        and generator for the others."""
        greedy = [i for i, row in enumerate(rows) if row.greedy]
        tokens = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        if greedy:  # only greedy rows pay for an argmax over the vocabulary
            tokens[greedy] = greedy_tokens(logits if len(greedy) == len(rows) else logits[greedy])
        for i, row in enumerate(rows):
            if not row.greedy:
                r = row.request
                tokens[i] = sample_next_token(logits[i:i + 1], r.temperature, r.top_k, r.top_p, row.generator)[0]
        return tokens.tolist()

    def _advance(self, row: _Row, token: int) -> Event:
        row.ids.append(token)
        row.new += 1
        if token == row.stop_token:
            return Event(row.index, token, row.text.flush() if row.text else "", "stop")
        text, stopped = row.text.push(token) if row.text else ("", False)
        if stopped:
            return Event(row.index, token, text, "stop")
        if row.new == row.request.max_new_tokens:
            return Event(row.index, token, text + (row.text.flush() if row.text else ""), "length")
        return Event(row.index, token, text, None)

    # ---- conveniences ----

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, do_sample: bool = True, stop: Sequence[str] | None = None,
                 seed: int | None = None, stop_token: int | str | None = EOT,
                 generator: torch.Generator | None = None):
        """(B, T) LongTensor -> (B, T + new) like model.generate; a list of id lists -> a list of id lists.

        Rows that stop early (stop token or string) are padded with the stop token (or the tokenizer's
        <|endoftext|>) in the tensor form; the tensor ends when the last row stops. seed: row i draws from
        torch.Generator().manual_seed(seed + i); generator: one generator for all rows. max_new_tokens 0 returns
        the prompts.
        """
        as_tensor = isinstance(idx, torch.Tensor)
        if as_tensor:
            if idx.dim() != 2 or idx.dtype != torch.long or idx.numel() == 0:
                raise GPTCoreError(f"idx must be a (B, T) tensor of token ids (torch.long) with T >= 1, got shape "
                                   f"{tuple(idx.shape)} and {idx.dtype}; for one prompt use ids[None]")
            prompts = idx.tolist()
        elif isinstance(idx, list) and idx and all(isinstance(p, list) for p in idx):
            prompts = idx
        else:
            raise GPTCoreError("idx must be a (B, T) LongTensor or a non-empty list of lists of token ids")
        if max_new_tokens == 0:
            check_sampling(temperature, top_k, top_p)
            return idx.clone() if as_tensor else [list(p) for p in prompts]
        requests = [Request(p, max_new_tokens, temperature, top_k, top_p, do_sample, tuple(stop or ()),
                            None if seed is None else seed + i, stop_token=stop_token) for i, p in enumerate(prompts)]
        outs = [list(p) for p in prompts]
        for events in self.run(requests, [generator] * len(requests) if generator is not None else None):
            for e in events:
                if e.token is not None:
                    outs[e.index].append(e.token)
        if not as_tensor:
            return outs
        width = max(len(o) for o in outs)
        pad = self._stop_token(requests[0])
        if pad is None and width > min(len(o) for o in outs):
            pad = self.tokenizer.eot_token
        return torch.tensor([o + [pad] * (width - len(o)) for o in outs], device=idx.device)

    def stream(self, prompt: str | list[int], max_new_tokens: int, **sampling) -> Iterator[str]:
        """New text pieces for one prompt (text needs the tokenizer; "" starts from <|endoftext|>); sampling: the
        other fields of Request (temperature, top_k, top_p, do_sample, stop, seed, stop_token)."""
        if self.tokenizer is None:
            raise GPTCoreError("stream() yields text: it needs a tokenizer, Generator(model, tokenizer)")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, allow_special=True) if prompt else [self.tokenizer.eot_token]
        else:
            ids = list(prompt)
        for events in self.run([Request(ids, max_new_tokens, **sampling)]):
            for e in events:
                if e.text:
                    yield e.text


class Batch:
    """Continuous batching: requests join at any step boundary and leave when they finish or are cancelled.

    It owns `rows` rows of one KV cache of max_len positions each (taken from the engine's pool, given back by
    close()), and the engine's weights as they are when it is made. Each step() feeds every running request one
    token (a newcomer: its prompt) and returns their Events; a finished or cancelled request's row is free for the
    next add(). A request's tokens do not depend on what else runs with it.

        with engine.batch(rows=4) as batch:
            batch.add(Request(ids, 50))                # -> a handle, the index of this request's Events
            while batch:                               # while requests run
                events = batch.step()
                if batch.free: batch.add(...)          # newcomers join at the next step

    Use a Batch from one thread; other threads may set Request.cancelled.
    """

    def __init__(self, engine: Generator, rows: int, max_len: int):
        if not (isinstance(rows, int) and rows >= 1 and isinstance(max_len, int) and 1 <= max_len <= engine.block_size):
            raise GPTCoreError(f"a batch needs rows >= 1 and max_len in [1, {engine.block_size}], got {rows} and "
                               f"{max_len}")
        self.engine, self.rows, self.max_len = engine, rows, max_len
        with torch.inference_mode():
            self.cache = engine._take_cache(rows, max_len)
            self._model = engine._inference_model()  # the weights as they are now, for the whole batch
        self._running = []  # the running requests' _Rows, in the order of their cache rows
        self._free = list(range(rows))  # cache rows no request holds, lowest first
        self._dropped = []  # final events of cancelled requests, for the next step to return
        self._handles = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Gives the cache back to the engine (once); running requests get no more steps."""
        if self.cache is not None:
            self.engine._caches.append(self.cache)
            self.cache, self._running = None, []

    def __len__(self) -> int:
        """How many requests are running (a cancelled one until the step that drops it)."""
        return len(self._running)

    @property
    def free(self) -> int:
        """How many requests add() takes now: rows nobody holds, and those of cancelled requests."""
        return len(self._free) + sum(r.request.cancelled for r in self._running)

    def add(self, request: Request, generator: torch.Generator | None = None) -> int:
        """Starts a request at the next step; returns its handle (Event.index). generator: draw its samples from
        it instead of from request.seed. Raises GPTCoreError for a bad request or when no row is free."""
        engine = self.engine
        engine._check_request(request, "request")
        needs = engine._positions(request)
        if needs > self.max_len:
            raise GPTCoreError(f"request: its prompt and max_new_tokens need {needs} positions and this batch's rows "
                               f"hold {self.max_len}; make the batch with a larger max_len")
        if self.cache is None:
            raise GPTCoreError("this batch is closed; make a new one with Generator.batch")
        if not self._free:
            self._drop_cancelled()
        if not self._free:
            raise GPTCoreError(f"all {self.rows} rows of this batch are running; add when batch.free > 0")
        if generator is None and request.seed is not None:
            generator = torch.Generator(engine.device).manual_seed(request.seed)
        text = TextStream(engine.tokenizer, request.stop) if engine.tokenizer is not None else None
        row = _Row(self._handles, request, self._free.pop(0), engine.block_size, engine._stop_token(request), text,
                   generator)
        self._handles += 1
        self._running.append(row)
        self._running.sort(key=lambda r: r.row)
        return row.index

    def _drop_cancelled(self):
        """Frees the rows of cancelled requests; their final events go out with the next step's."""
        for row in [r for r in self._running if r.request.cancelled]:
            self._release(row)
            self._dropped.append(Event(row.index, None, "", "cancelled"))

    def _release(self, row: _Row):
        self._running.remove(row)
        self._free.append(row.row)
        self._free.sort()

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """One token for every running request (a newcomer's prompt is prefilled first) -> their Events; each
        request's last Event has finish_reason set ("stop", "length" or "cancelled")."""
        engine, block_size = self.engine, self.engine.block_size
        self._drop_cancelled()
        events, self._dropped = self._dropped, []
        rows = list(self._running)
        if not rows:
            return events
        inputs = [r.pending(block_size) for r in rows]
        # fresh windows (prefills) and single new tokens go in separate forwards: padding a decode step to a
        # prompt's length would waste the step
        prefill = [i for i, ids in enumerate(inputs) if len(ids) > 1]
        decode = [i for i, ids in enumerate(inputs) if len(ids) == 1]
        logits = [None] * len(rows)
        for group in (prefill, decode):
            if group:
                out = engine._forward(self._model, [rows[i] for i in group], [inputs[i] for i in group], self.cache)
                for i, row_logits in zip(group, out):
                    logits[i] = row_logits
        for row, ids in zip(rows, inputs):
            row.cached += len(ids)
        tokens = engine._sample(rows, torch.stack(logits))
        for row, token in zip(rows, tokens):
            event = engine._advance(row, token)
            events.append(event)
            if event.finish_reason:
                self._release(row)
        return events


_CACHED = weakref.WeakKeyDictionary()


def generator_for(model, dtype=None) -> Generator:
    """The Generator model.generate uses, kept for the model as long as it lives (it holds the model weakly)."""
    dtype = parse_dtype(dtype)
    engines = _CACHED.setdefault(model, {})
    device = next(model.parameters()).device
    engine = engines.get((device, dtype))
    if engine is None:
        engine = Generator(model, dtype=dtype)
        engine._model = weakref.ref(model)
        engines[(device, dtype)] = engine
    return engine
