"""gptcore's one compiled kernel, int8_step.c: a GPT-2 decode step with int8 weights in one call, and the int8
product it is made of. Built with this machine's C compiler on first use and called through ctypes.

Fenced as cpu_kernels fences PyTorch's private ops: library() is None where there is no C compiler or the build
fails, and works() checks the built product against float64 before anything uses it. Everything here has a
PyTorch path (cpu_kernels' other int8 kernels and the model's own forward), and the tests run both.

The build goes to device.cache_root()/native, named by a hash of the source, the compiler, its flags and this
CPU's flags (-march=native tunes it to them), written to a temporary name and renamed. OpenMP: the library needs
libgomp.so.1, which the loader finds already loaded by PyTorch, so both share one thread pool and
torch.set_num_threads.
"""

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

from ..device import cache_root

SOURCE = Path(__file__).with_name("int8_step.c")
# reassociation lets gcc vectorize float sums. Not -ffast-math: in a shared library (gcc 12) it also sets the
# whole process's float flags at load time, flushing denormals to zero in PyTorch too.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-shared", "-fPIC"]


class _QLinear(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("rowsum", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("n_out", ctypes.c_int64), ("n_in", ctypes.c_int64)]


class _Layer(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("ln_1_w", "ln_1_b", "ln_2_w", "ln_2_b")] + \
               [(name, _QLinear) for name in ("c_attn", "attn_proj", "c_fc", "mlp_proj")]


class _Model(ctypes.Structure):
    _fields_ = [("n_layer", ctypes.c_int64), ("n_head", ctypes.c_int64), ("n_embd", ctypes.c_int64),
                ("layers", ctypes.POINTER(_Layer)), ("ln_f_w", ctypes.c_void_p), ("ln_f_b", ctypes.c_void_p),
                ("lm_head", _QLinear)]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


@functools.cache
def library():
    """The built int8_step.c as a ctypes library, or None where it can't be built here (no compiler, no OpenMP,
    not Linux)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not Path("/proc/cpuinfo").exists():
        return None
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, *FLAGS, _cpu_flags()]).encode()).hexdigest()[:16]
    path = Path(cache_root()) / "native" / f"int8_step-{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"], check=True,
                           capture_output=True, timeout=300)
            os.replace(partial, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        return None
    lib.int8_linear.argtypes = [ctypes.POINTER(_QLinear), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.int8_decode_step.argtypes = [ctypes.POINTER(_Model), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p]
    return lib


class PreparedLinear:
    """An int8 weight (out, in) with its scales (out,) and bias (out,) or None, as int8_step.c reads them: the
    weight itself (not copied), its row sums, and float32 scales and bias. Holds every tensor it points to."""

    def __init__(self, weight, scales, bias=None):
        self.weight = weight.detach().contiguous()
        self.rowsum = self.weight.sum(dim=1, dtype=torch.int32)
        self.scales = scales.detach().float().contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.struct = _QLinear(self.weight.data_ptr(), self.rowsum.data_ptr(), self.scales.data_ptr(),
                               None if self.bias is None else self.bias.data_ptr(), *self.weight.shape)


def int8_linear(x, prepared: PreparedLinear):
    """x (..., in) -> (..., out) in x's dtype: each row of x quantized to 8 bits (its own scale), then multiplied
    in integers by the int8 weight; float32 inside."""
    rows = x.detach().reshape(-1, x.size(-1)).float().contiguous()
    y = torch.empty(rows.size(0), prepared.weight.size(0))
    if rows.size(0) and library().int8_linear(ctypes.byref(prepared.struct), rows.size(0), rows.data_ptr(),
                                              y.data_ptr()):
        raise MemoryError("int8_linear: out of memory")
    return y.view(*x.shape[:-1], -1).to(x.dtype)


@functools.cache
def works() -> bool:
    """Whether the compiled product runs here and matches float64 (within 8-bit activations' rounding), tried once
    on widths that are and are not multiples of 64 and row counts around its blocks of 8."""
    if library() is None:
        return False
    gen = torch.Generator().manual_seed(0)
    for rows, n_in in [(1, 64), (9, 100), (3, 768)]:
        x = torch.randn(rows, n_in, generator=gen)
        w = torch.randint(-127, 128, (40, n_in), dtype=torch.int8, generator=gen)
        scales, bias = torch.rand(40, generator=gen) / 64, torch.randn(40, generator=gen)
        want = torch.nn.functional.linear(x.double(), w.double() * scales.double()[:, None], bias.double())
        got = int8_linear(x, PreparedLinear(w, scales, bias)).double()
        if not ((got - want).abs().max() / want.abs().max()).item() < 2e-2:
            return False
    return True


class Int8DecodeStep:
    """One decode step of a GPT-2 whose linears are int8 (quantize.quantize_int8), in one C call.

    model: the engine's int8 copy, read by OpenAI's checkpoint names (transformer.wte, wpe, h.N.ln_1, attn.c_attn,
    attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head). It shares the int8 weights (not copied); LayerNorms,
    scales and biases get float32 copies, so the step must be made again when the model's weights change.
    """

    def __init__(self, model):
        c, t = model.config, model.transformer
        self._keep = []  # the float32 copies the structs point to
        layers = (_Layer * c.n_layer)()
        for layer, block in zip(layers, t.h):
            layer.ln_1_w, layer.ln_1_b = self._floats(block.ln_1.weight), self._floats(block.ln_1.bias)
            layer.ln_2_w, layer.ln_2_b = self._floats(block.ln_2.weight), self._floats(block.ln_2.bias)
            for name, linear in [("c_attn", block.attn.c_attn), ("attn_proj", block.attn.c_proj),
                                 ("c_fc", block.mlp.c_fc), ("mlp_proj", block.mlp.c_proj)]:
                setattr(layer, name, self._linear(linear))
        self.head = model.lm_head.weight.size(0)
        self.struct = _Model(c.n_layer, c.n_head, c.n_embd, layers, self._floats(t.ln_f.weight),
                             self._floats(t.ln_f.bias), self._linear(model.lm_head))
        self._keep.append(layers)
        self.wte, self.wpe = t.wte.weight, t.wpe.weight

    def _floats(self, tensor):
        if tensor is None:
            return None
        tensor = tensor.detach().float().contiguous()
        self._keep.append(tensor)
        return tensor.data_ptr()

    def _linear(self, module):
        prepared = PreparedLinear(module.weight, module.scales, module.bias)
        self._keep.append(prepared)
        return prepared.struct

    def __call__(self, tokens: list[int], rows: list[int], positions: list[int], cache) -> torch.Tensor:
        """One new token per row: tokens[b] at position positions[b] of the sequence in cache row rows[b], whose
        keys and values go into the cache (cache.KVCache, float32 or bfloat16) -> logits (B, lm_head's out) in
        float32."""
        idx, pos = torch.tensor(tokens), torch.tensor(positions)
        x = (self.wte[idx] + self.wpe[pos]).float().contiguous()  # (B, C), as the model adds them
        row_index = torch.tensor(rows)
        logits = torch.empty(len(tokens), self.head)
        if library().int8_decode_step(ctypes.byref(self.struct), len(tokens), x.data_ptr(), cache.k.data_ptr(),
                                      cache.v.data_ptr(), int(cache.k.dtype == torch.bfloat16), cache.batch_size,
                                      cache.max_len, row_index.data_ptr(), pos.data_ptr(), logits.data_ptr()):
            raise MemoryError("int8_decode_step: out of memory")
        return logits
