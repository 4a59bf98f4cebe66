"""Every private PyTorch op gptcore uses, fenced: each runs only where a capability check found it working, and each
has a plain-PyTorch fallback that gives the same numbers (tests/test_infer_kernels.py runs both paths).

- oneDNN's packed linear (torch.ops.mkldnn): a bf16 weight reordered once into oneDNN's blocked layout. Given a
  plain row-major bf16 weight, oneDNN repacks it inside every call, which costs as much as the product itself when
  a decode step multiplies it by one vector. Fallback: F.linear. (fp32 stays on F.linear: MKL streams fp32 weights
  well, and oneDNN's fp32 kernel is not bit-identical to it.)
- ATen's int8 weight-only matmul (torch._weight_int8pack_mm, the op gpt-fast uses): x @ (int8 W).T * scales without
  materializing a dequantized W. Fallback: F.linear on W converted to x's dtype, then the scales.
"""

import functools

import torch
import torch.nn as nn
from torch.nn import functional as F


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
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(3, 64, generator=gen).to(device=device_type, dtype=dtype)
        w = torch.randint(-127, 128, (32, 64), dtype=torch.int8, generator=gen).to(device_type)
        scales = (torch.rand(32, generator=gen) / 64).to(device=device_type, dtype=dtype)
        want = F.linear(x.double(), w.double()) * scales.double()
        got = op(x, w, scales).double()
        return bool(torch.allclose(got, want, rtol=2e-2, atol=2e-2))
    except (RuntimeError, NotImplementedError):
        return False


FUSED_INT8_MAX_ROWS = 32


def int8_linear(x, weight, scales, bias=None, fused: bool | None = None):
    """x (..., in) times an int8 weight (out, in) with per-output-channel scales (out,) -> (..., out) in x's dtype.

    fused: use the private op (None: wherever int8_mm_works, for up to FUSED_INT8_MAX_ROWS rows of x); False forces
    the plain-PyTorch way, which converts the weight to x's dtype first. The fused op is a matrix-vector kernel:
    it streams int8 weights fastest for a decode step, but a 512-token prefill runs 6x faster converted.
    """
    if fused is None:
        fused = x.numel() // x.size(-1) <= FUSED_INT8_MAX_ROWS and int8_mm_works(x.device.type, x.dtype)
    if fused:
        y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)), weight, scales).view(*x.shape[:-1], -1)
    else:
        y = F.linear(x, weight.to(x.dtype)) * scales
    return y if bias is None else y + bias
