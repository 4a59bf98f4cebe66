"""Every private PyTorch op gptcore uses, fenced: each runs only where a capability check found it working, and each
has a plain-PyTorch fallback that gives the same numbers, or, for int8, numbers within the stated tolerance
(tests/test_infer_kernels.py and tests/test_int8_quality.py run every path).

- oneDNN's packed linear (torch.ops.mkldnn): a bf16 weight reordered once into oneDNN's blocked layout. Given a
  plain row-major bf16 weight, oneDNN repacks it inside every call, which costs as much as the product itself when
  a decode step multiplies it by one vector. Fallback: F.linear. (fp32 stays on F.linear: MKL streams fp32 weights
  well, and oneDNN's fp32 kernel is not bit-identical to it.) A bf16 decode step may instead run in gptcore's own
  C kernel (below); bf16_decode_kernel measures which.
- Four ways to multiply by an int8 weight (out, in) with per-output-channel scales, INT8_KERNELS:
  "native": gptcore's own C kernel (native.py, decode_step.c, built on first use), CTranslate2's method too: each
      row of activations quantized to 8 bits with its own scale, products in int8 with int32 sums (VNNI where
      the CPU has it). Where it is chosen, the engine runs whole decode steps in C (native.DecodeStep).
  "weight_only": ATen's int8 weight-only matmul (torch._weight_int8pack_mm, the op gpt-fast uses), x @ (int8 W).T
      * scales without materializing a dequantized W; fast with bf16 activations, slow with fp32 ones.
  "dynamic": FBGEMM's dynamic int8 linear (torch.ops.quantized), as CTranslate2 does it: the weight is prepacked
      once, and each call quantizes the activations to 8 bits on the fly (one scale per call) and multiplies in
      int8 with int32 sums. On the project's Xeon it is the fastest at batch 1, at ~65% of memory speed.
  "converted": plain PyTorch, F.linear on the weight converted to the compute dtype, then the scales; the fallback,
      and the fastest for many rows (a prefill), where converting the weight once costs little per row.
  Which one a decode step uses is measured once per machine (int8_decode_kernel); many rows always convert.
"native" is not a private PyTorch op, but it is fenced the same way: native.works() checks it before any use.
"""

import functools
import warnings

import torch
import torch.nn as nn
from torch.nn import functional as F

from ..device import cpu_bf16_is_faster, fastest
from . import native


@functools.cache
def packed_linear_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear runs here in dtype (bf16 only) and matches F.linear exactly, tried once."""
    if dtype != torch.bfloat16:
        return False
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None or not hasattr(ops, "_reorder_linear_weight"):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        w, x, b = (torch.randn(shape, generator=gen).to(dtype) for shape in [(24, 16), (3, 1, 16), (24,)])
        packed = ops._reorder_linear_weight(w, 1)
        return torch.equal(ops._linear_pointwise(x, packed, b, "none", [], ""), F.linear(x, w, b))
    except (RuntimeError, NotImplementedError):
        return False


class PackedLinear(nn.Module):
    """An nn.Linear frozen for CPU inference: its weight is reordered once into oneDNN's blocked layout.

    Outputs are bit-identical to nn.Linear's. The packed weight is a plain attribute: it does not move with .to()
    and is not in the state dict, so a model with PackedLinears is for generation only (the engine's own copy).
    Where packing doesn't work (packed_linear_works is False) it keeps the plain weight and calls F.linear.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.packed = weight.device.type == "cpu" and packed_linear_works(weight.dtype)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 1) if self.packed else weight

    def forward(self, x):
        """(..., in_features) -> (..., out_features), in the weight's dtype."""
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def pack_linears(model: nn.Module) -> nn.Module:
    """Replaces every nn.Linear of model (a CPU inference copy) by a PackedLinear, in place; returns model."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, PackedLinear(child))
    return model


@functools.cache
def int8_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether ATen's int8 weight-only matmul runs here for activations of dtype, and agrees with the fallback."""
    op = getattr(torch, "_weight_int8pack_mm", None)
    if op is None:
        return False
    try:
        x, w, scales = _int8_example()
        x, w, scales = x.to(device=device_type, dtype=dtype), w.to(device_type), scales.to(device_type, dtype)
        return _close_to_float64(op(x, w, scales), x, w, scales, tol=2e-2)
    except (RuntimeError, NotImplementedError):
        return False


@functools.cache
def dynamic_int8_works() -> bool:
    """Whether FBGEMM's dynamic int8 linear runs here (x86 CPUs with AVX2 or better) and is close to float64."""
    if "fbgemm" not in torch.backends.quantized.supported_engines or not hasattr(torch.ops, "quantized"):
        return False
    try:
        x, w, scales = _int8_example()
        return _close_to_float64(dynamic_int8_linear(x, pack_int8(w, scales)), x, w, scales, tol=5e-2)
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


def _int8_example():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, generator=gen)
    w = torch.randint(-127, 128, (32, 64), dtype=torch.int8, generator=gen)
    return x, w, torch.rand(32, generator=gen) / 64


def _close_to_float64(got, x, w, scales, tol: float) -> bool:
    want = F.linear(x.double(), w.double()) * scales.double()
    return bool(((got.double() - want).abs().max() / want.abs().max()).item() < tol)


def pack_int8(weight, scales, bias=None):
    """int8 weight (out, in), scales (out,) and bias (out,) or None -> FBGEMM's prepacked weight (an opaque object
    for dynamic_int8_linear; CPU only, not picklable into a state dict)."""
    with warnings.catch_warnings():  # torch flags its quantized tensor type for removal; dynamic_int8_works checks
        warnings.simplefilter("ignore")
        q = torch._make_per_channel_quantized_tensor(weight.cpu(), scales.detach().double().cpu(),
                                                     torch.zeros(weight.size(0), dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float().cpu())


def dynamic_int8_linear(x, packed):
    """x (..., in) times a pack_int8 weight -> (..., out) in x's dtype; computed from float32 activations quantized
    to 8 bits (7 bits of range, reduce_range, so FBGEMM's 16-bit partial sums can't saturate on any x86 CPU)."""
    # the overload itself, not the packet: the packet checks its arguments for fake script objects in Python
    # first, ~3 us per call (measured), which a decode step pays 49 times
    return torch.ops.quantized.linear_dynamic.default(x.float(), packed, True).to(x.dtype)


INT8_KERNELS = ("native", "dynamic", "weight_only", "converted")
PREPARED = ("native", "dynamic")  # the kernels that take the weight prepared once (prepare_int8)
FEW_ROWS = 32  # up to this many rows of x, a product is a decode step's: bound by reading the weight


def _decode_shapes(blocks: int) -> list[tuple[int, int]]:
    """(out, in) of the products of `blocks` GPT-2 124M blocks. Kernels are timed on all 12 of a real model: whether
    the weights fit in the CPU's last-level cache (300 MB on the project's Xeon: GPT-2 124M in bf16 or int8 does,
    in fp32 it doesn't) decides as much as the kernel does."""
    return [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * blocks


BF16_KERNELS = ("native", "packed", "plain")  # see bf16_decode_kernel


def _rest_of_step(rows: int, dtype: torch.dtype, length: int = 64):
    """A function running what a PyTorch decode step of GPT-2 124M does besides its products, at `rows` rows with
    `length` cached positions: per block two LayerNorms, two residual adds, GELU, the cache writes and attention
    (the model's ops, on random tensors). A kernel that runs the whole step in C ("native") replaces these too, so
    the PyTorch kernels are timed with them. They alone took ~1 ms on the project's Xeon; with the model's Python
    around them the rest of a real step took 4-6 ms (bench_generate.py), so this leans toward PyTorch's kernels."""
    gen = torch.Generator().manual_seed(0)
    x, h = (torch.randn(rows, 1, 768, generator=gen).to(dtype) for _ in range(2))
    fc = torch.randn(rows, 1, 3072, generator=gen).to(dtype)
    ln = nn.LayerNorm(768, device="meta").to_empty(device="cpu").to(dtype)
    cache = torch.zeros(2, rows * length, 768, dtype=dtype)
    write = torch.arange(rows) * length + length - 1

    def rest():
        for _ in range(12):
            for _ in range(2):  # before and after attention
                ln(x)
                x + h
            F.gelu(fc, approximate="tanh")
            for store in cache:
                store.index_copy_(0, write, h.view(rows, 768))
            keys = cache[0].view(rows, length, 12, 64).transpose(1, 2)
            F.scaled_dot_product_attention(h.view(rows, 1, 12, 64).transpose(1, 2), keys, keys)
    return rest


def _with_rest(products, rest):
    return lambda: (products(), rest())


def _bf16_layers(rows: int):
    """A decode step's bf16 products at `rows` rows, as (x, weight (out, in)) pairs, and fp32 copies of them."""
    gen = torch.Generator().manual_seed(0)
    bf16, fp32 = [], []
    for out_features, in_features in _decode_shapes(12):
        w = torch.randn(out_features, in_features, generator=gen) * 0.02
        x = torch.randn(rows, in_features, generator=gen)
        fp32.append((x, w))
        bf16.append((x.bfloat16(), w.bfloat16()))
    return bf16, fp32


def _bf16_products(kernel: str, layers):
    """A function running the products of layers (_bf16_layers' bf16 pairs) with a BF16_KERNELS kernel."""
    if kernel == "native":
        prepared = [(x, native.PreparedLinear(w)) for x, w in layers]
        return lambda: [native.linear(x, p) for x, p in prepared]
    if kernel == "packed":
        packed = []
        for x, w in layers:
            linear = nn.Linear(w.size(1), w.size(0), bias=False, device="meta")  # meta: no draw from the global RNG
            linear.weight = nn.Parameter(w, requires_grad=False)
            packed.append((x, PackedLinear(linear)))
        return lambda: [m(x) for x, m in packed]
    return lambda: [F.linear(x, w) for x, w in layers]


@functools.cache
def bf16_decode_kernel(rows: int = 1) -> str:
    """How a decode step's bf16 products run fastest here at `rows` rows, one of BF16_KERNELS: "native", gptcore's
    C kernel (the engine then runs whole decode steps in C, native.DecodeStep); "packed", oneDNN's packed linear;
    "plain", F.linear (where neither works). Timed once in alternation (device.fastest), each as the step it
    implies: native's products (the rest of its step costs ~0.5 ms in C), packed's plus PyTorch's rest of the step
    (_rest_of_step); "native" is the baseline, which the others must beat by the margin."""
    works = [k for k, ok in [("native", native.works()), ("packed", packed_linear_works(torch.bfloat16))] if ok]
    if len(works) < 2:
        return (works or ["plain"])[0]
    layers, _ = _bf16_layers(rows)
    rest = _rest_of_step(rows, torch.bfloat16)
    steps = {k: _bf16_products(k, layers) if k == "native" else _with_rest(_bf16_products(k, layers), rest)
             for k in works}
    with torch.inference_mode():
        return fastest({k: (step,) for k, step in steps.items()}, margin=0.9, rounds=3)


@functools.cache
def bf16_decodes_faster(rows: int = 1) -> bool:
    """Whether a decode step, at `rows` rows, runs clearly faster in bf16 (bf16_decode_kernel's way) than with fp32
    weights through F.linear, timed once in alternation (device.fastest, about 1 s on a quiet machine): the
    products, and for a PyTorch kernel the rest of the step (_rest_of_step).

    bf16 halves the bytes to read, but a kernel must stream them well to gain: on an Intel Xeon with AMX (2 cores),
    oneDNN's packed bf16 matrix-vector product ran no faster than MKL's fp32 one, while bf16 matrix products ran
    ~2.6x faster (device.cpu_bf16_is_faster).
    """
    kernel = bf16_decode_kernel(rows)
    if kernel == "plain":
        return False
    bf16, fp32 = _bf16_layers(rows)
    steps = {"fp32": _with_rest(_bf16_products("plain", fp32), _rest_of_step(rows, torch.float32)),
             "bf16": _bf16_products(kernel, bf16)}
    if kernel != "native":
        steps["bf16"] = _with_rest(steps["bf16"], _rest_of_step(rows, torch.bfloat16))
    with torch.inference_mode():
        return fastest({k: (step,) for k, step in steps.items()}, margin=0.8, rounds=3) == "bf16"


@functools.cache
def int8_decode_kernel(device_type: str, dtype: torch.dtype) -> str:
    """The int8 kernel for a decode step's few rows on device_type with activations of dtype: the fastest of those
    that work here, timed once in alternation at batch 1 (device.fastest, about 1 s on a quiet machine);
    "converted" only where no other kernel works (it converts the whole weight for one row).

    Measured because flags don't tell: on an Intel Xeon with AMX and AVX512-BF16 (2 cores), dynamic streams
    int8 weights ~1.9x faster than weight_only with bf16 activations, and weight_only with fp32 activations is
    ~3.5x slower than fp32 F.linear; elsewhere weight_only was measured 5x slower than fp32. Each is timed as the
    decode step it implies: where "native" is chosen the engine runs the whole step in C, so the PyTorch kernels
    are timed with PyTorch's rest of the step (_rest_of_step). "native" is the baseline the others must beat by
    the margin.
    """
    cpu = device_type == "cpu" and dtype in (torch.float32, torch.bfloat16)
    works = {"native": cpu and native.works(), "dynamic": cpu and dynamic_int8_works(),
             "weight_only": int8_mm_works(device_type, dtype)}
    works = [k for k in works if works[k]] or ["converted"]
    if device_type != "cpu" or len(works) == 1:
        return works[0]
    gen = torch.Generator().manual_seed(0)
    layers = []
    for out_features, in_features in _decode_shapes(12):
        w = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8, generator=gen)
        scales = torch.rand(out_features, generator=gen).to(dtype) / 1000
        prepared = {k: prepare_int8(k, w, scales) for k in works if k in PREPARED}
        layers.append((torch.randn(1, in_features, generator=gen).to(dtype), w, scales, prepared))

    rest = _rest_of_step(1, dtype)

    def step(kernel):
        for x, w, scales, prepared in layers:
            int8_linear(x, w, scales, packed=prepared.get(kernel), kernel=kernel)
        if kernel != "native":  # the rest of a native step runs in C, ~0.5 ms
            rest()

    with torch.inference_mode():
        return fastest({k: (step, k) for k in works}, margin=0.9, rounds=3)


def prepare_int8(kernel: str, weight, scales, bias=None):
    """The weight as a PREPARED kernel takes it: "dynamic", pack_int8's; "native", a native.PreparedLinear."""
    return pack_int8(weight, scales, bias) if kernel == "dynamic" else native.PreparedLinear(weight, scales, bias)


def int8_linear(x, weight, scales, bias=None, packed=None, kernel: str | None = None):
    """x (..., in) times an int8 weight (out, in) with per-output-channel scales (out,) -> (..., out) in x's dtype.

    packed: prepare_int8(kernel, weight, scales, bias), needed by the PREPARED kernels (it then holds the bias).
    kernel: one of INT8_KERNELS; None: int8_decode_kernel's choice for up to FEW_ROWS rows (weight_only stands in
    for a PREPARED kernel where there is no prepared weight), "converted" for more, where a prefill's product is
    compute-bound.
    """
    if kernel is None:
        kernel = "converted"
        if x.numel() // x.size(-1) <= FEW_ROWS:
            kernel = int8_decode_kernel(x.device.type, x.dtype)
            if kernel in PREPARED and packed is None:
                kernel = "weight_only" if int8_mm_works(x.device.type, x.dtype) else "converted"
    if kernel == "dynamic":
        return dynamic_int8_linear(x, packed)
    if kernel == "native":
        return native.linear(x, packed)
    if kernel == "weight_only":
        y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)), weight, scales).view(*x.shape[:-1], -1)
    else:
        compute = x.dtype
        if x.device.type == "cpu" and x.dtype == torch.float32 and cpu_bf16_is_faster():
            compute = torch.bfloat16  # AMX: a prefill's products in bf16 run ~2.6x faster; the weights are int8 anyway
        y = F.linear(x.to(compute), weight.to(compute)).to(x.dtype) * scales
    return y if bias is None else y + bias
