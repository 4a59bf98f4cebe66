"""gptcore's one compiled kernel, decode_step.c: a GPT-2 decode step in one call, with int8 or bfloat16 weights,
and the products it is made of. Built with this machine's C compiler on first use and called through ctypes.

Fenced as cpu_kernels fences PyTorch's private ops: library() is None where there is no C compiler or the build
fails, and works() checks the built products against float64 before anything uses them. Everything here has a
PyTorch path (cpu_kernels' other kernels and the model's own forward), and the tests run both.

The build goes to device.cache_root()/native, named by a hash of the source, the compiler, its flags and this
CPU's flags (-march=native tunes it to them), written to a temporary name and renamed. OpenMP: the library needs
libgomp.so.1, which the loader finds already loaded by PyTorch, so both share one thread pool and
torch.set_num_threads.
"""

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import torch

from ..device import cache_root

SOURCE = Path(__file__).with_name("decode_step.c")
# reassociation lets gcc vectorize float sums. Not -ffast-math: in a shared library (gcc 12) it also sets the
# whole process's float flags at load time, flushing denormals to zero in PyTorch too.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
         "-fno-trapping-math", "-shared", "-fPIC"]


class _Linear(ctypes.Structure):
    _fields_ = [("w", ctypes.c_void_p), ("rowsum", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("n_out", ctypes.c_int64), ("n_in", ctypes.c_int64),
                ("bf16", ctypes.c_int64)]


class _Layer(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("ln_1_w", "ln_1_b", "ln_2_w", "ln_2_b")] + \
               [(name, _Linear) for name in ("c_attn", "attn_proj", "c_fc", "mlp_proj")]


class _Model(ctypes.Structure):
    _fields_ = [("n_layer", ctypes.c_int64), ("n_head", ctypes.c_int64), ("n_embd", ctypes.c_int64),
                ("layers", ctypes.POINTER(_Layer)), ("ln_f_w", ctypes.c_void_p), ("ln_f_b", ctypes.c_void_p),
                ("lm_head", _Linear)]


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


@functools.cache
def library():
    """The built decode_step.c as a ctypes library, or None where it can't be built here (no compiler, no OpenMP,
    not Linux)."""
    compiler = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc")]
    if compiler[0] is None or not Path("/proc/cpuinfo").exists():
        return None
    try:
        key = hashlib.sha256("\n".join([SOURCE.read_text(), *compiler, *FLAGS, _cpu_flags()]).encode())
    except OSError:  # an install without the source
        return None
    path = Path(cache_root()) / "native" / f"decode_step-{key.hexdigest()[:16]}.so"
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([*compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"], check=True,
                           capture_output=True, timeout=300)
            os.replace(partial, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError):
        partial.unlink(missing_ok=True)
        return None
    lib.linear_rows.argtypes = [ctypes.POINTER(_Linear), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    lib.decode_step.argtypes = [ctypes.POINTER(_Model), ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_void_p, ctypes.c_void_p]
    return lib


class PreparedLinear:
    """A linear layer's weight as decode_step.c reads it: int8 (out, in) with its scales (out,), or bfloat16
    (out, in) with scales None; and its bias (out,) or None. The weight itself is not copied; int8 adds its row
    sums, and scales and bias are float32 copies. Holds every tensor it points to."""

    def __init__(self, weight, scales=None, bias=None):
        self.weight = weight.detach().contiguous()
        int8 = self.weight.dtype == torch.int8
        if int8 == (scales is None) or not (int8 or self.weight.dtype == torch.bfloat16):
            raise ValueError(f"decode_step.c takes int8 weights with scales or bfloat16 ones without, got "
                             f"{self.weight.dtype} {'with' if scales is not None else 'without'} scales")
        self.rowsum = self.weight.sum(dim=1, dtype=torch.int32) if int8 else None
        self.scales = scales.detach().float().contiguous() if int8 else None
        self.bias = None if bias is None else bias.detach().float().contiguous()
        pointer = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        self.struct = _Linear(self.weight.data_ptr(), pointer(self.rowsum), pointer(self.scales), pointer(self.bias),
                              *self.weight.shape, not int8)


def linear(x, prepared: PreparedLinear):
    """x (..., in) -> (..., out) in x's dtype; float32 inside, each row of x rounded to the weight's precision
    (int8: quantized to 8 bits with its own scale; bf16: rounded to bfloat16)."""
    rows = x.detach().reshape(-1, x.size(-1)).float().contiguous()
    y = torch.empty(rows.size(0), prepared.weight.size(0))
    if rows.size(0) and library().linear_rows(ctypes.byref(prepared.struct), rows.size(0), rows.data_ptr(),
                                              y.data_ptr()):
        raise MemoryError("linear_rows: out of memory")
    return y.view(*x.shape[:-1], -1).to(x.dtype)


@functools.cache
def works() -> bool:
    """Whether the compiled products run here and match float64 (within the rounding of their inputs: 8 bits for
    int8 weights, bfloat16's for bfloat16 ones), tried once on widths that are and are not multiples of 64, and row
    counts around its blocks of 4."""
    if library() is None:
        return False
    gen = torch.Generator().manual_seed(0)
    for rows, n_in, n_out in [(1, 64, 40), (9, 100, 42), (3, 768, 40)]:
        x = torch.randn(rows, n_in, generator=gen)
        w = torch.randint(-127, 128, (n_out, n_in), dtype=torch.int8, generator=gen)
        scales, bias = torch.rand(n_out, generator=gen) / 64, torch.randn(n_out, generator=gen)
        dequantized = w.double() * scales.double()[:, None]
        for weight, prepared in [(dequantized, PreparedLinear(w, scales, bias)),
                                 (dequantized.bfloat16().double(), PreparedLinear(dequantized.bfloat16(), None, bias))]:
            want = torch.nn.functional.linear(x.double(), weight, bias.double())
            got = linear(x, prepared).double()
            if not ((got - want).abs().max() / want.abs().max()).item() < 2e-2:
                return False
    return True


class DecodeStep:
    """One decode step of a GPT-2 in one C call, its linear layers int8 (quantize.quantize_int8's Int8Linear) or
    bfloat16 (nn.Linear).

    model: the engine's inference copy, read by OpenAI's checkpoint names (transformer.wte, wpe, h.N.ln_1,
    attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head). It shares the weights (not copied);
    LayerNorms, scales and biases get float32 copies, so the step must be made again when the model's weights
    change. Raises AttributeError or ValueError for a model of another layout or weight type.
    """

    def __init__(self, model):
        c, t = model.config, model.transformer
        self._keep = []  # the float32 copies the structs point to
        layers = (_Layer * c.n_layer)()
        for layer, block in zip(layers, t.h):
            layer.ln_1_w, layer.ln_1_b = self._floats(block.ln_1.weight), self._floats(block.ln_1.bias)
            layer.ln_2_w, layer.ln_2_b = self._floats(block.ln_2.weight), self._floats(block.ln_2.bias)
            for name, module in [("c_attn", block.attn.c_attn), ("attn_proj", block.attn.c_proj),
                                 ("c_fc", block.mlp.c_fc), ("mlp_proj", block.mlp.c_proj)]:
                setattr(layer, name, self._linear(module))
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
        prepared = PreparedLinear(module.weight, getattr(module, "scales", None), module.bias)
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
        if library().decode_step(ctypes.byref(self.struct), len(tokens), x.data_ptr(), cache.k.data_ptr(),
                                 cache.v.data_ptr(), int(cache.k.dtype == torch.bfloat16), cache.batch_size,
                                 cache.max_len, row_index.data_ptr(), pos.data_ptr(), logits.data_ptr()):
            raise MemoryError("decode_step: out of memory")
        return logits
