"""gptcore's compiled kernel (gptcore/infer/native.py, decode_step.c): its build and its fence, and its decode step
against the same model, int8 or bf16, run by PyTorch."""

import os
import platform

import pytest
import torch

from gptcore import GPT, GPTConfig, Generator
from gptcore.infer import cpu_kernels, native
from gptcore.infer.cache import KVCache
from gptcore.infer.quantize import quantize_int8

from test_infer_kernels import force_int8_kernel, strong_tiny_model

# CI installs a compiler (.ci/run): there, a kernel that doesn't build fails its tests instead of skipping them
needs_native = pytest.mark.skipif(not native.works() and not os.environ.get("CI"),
                                  reason="no C compiler here to build gptcore's decode step")


def test_the_build_goes_to_the_cache_and_a_failing_compiler_means_no_library(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    assert native.library.__wrapped__() is None
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.partial"))
    monkeypatch.setenv("CC", "/no/such/compiler")
    assert native.library.__wrapped__() is None
    monkeypatch.setattr(native, "library", lambda: None)
    assert native.works.__wrapped__() is False


@needs_native
def test_a_fresh_build_is_kept_under_gptcore_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    assert native.library.__wrapped__() is not None
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # renamed into place, nothing partial left


@pytest.fixture(params=["-march=native", "-march=x86-64-v2"])
def build(request, monkeypatch, tmp_path_factory):
    """Runs a test on the library built for this CPU (VNNI and AVX512-BF16 where it has them), and again built for
    x86-64 without AVX-512, whose plain C loops then run instead."""
    if request.param != "-march=native" and platform.machine() != "x86_64":
        pytest.skip("the plain build is x86-64's")
    monkeypatch.setattr(native, "FLAGS", [request.param if f == "-march=native" else f for f in native.FLAGS])
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path_factory.getbasetemp() / "native"))  # built once per session
    lib = native.library.__wrapped__()
    assert lib is not None
    monkeypatch.setattr(native, "library", lambda: lib)
    assert native.works.__wrapped__()
    return request.param


@needs_native
@pytest.mark.parametrize("weights, dtype", [("int8", torch.float32), ("int8", torch.bfloat16),
                                            ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("bias", [True, False])
def test_decode_step_matches_the_model_run_by_pytorch(monkeypatch, build, weights, dtype, bias):
    """Rows at different positions, in cache rows out of order: the C step's logits and cached keys and values
    are those of the model's own forward with the same weights (int8 through the native products), its
    activations and cache in dtype."""
    force_int8_kernel(monkeypatch, "native", dtype)
    torch.manual_seed(0)
    config = GPTConfig(block_size=24, vocab_size=70, n_layer=2, n_head=4, n_embd=80, bias=bias)  # 80: not 64k
    model = GPT(config).to(dtype).eval()
    if weights == "int8":
        quantize_int8(model)
    step = native.DecodeStep(model)
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8, 9, 7, 9, 3]]
    rows = [2, 0, 1]  # cache row of each prompt
    caches = {path: KVCache(2, 4, 20, 3, 24, dtype, "cpu") for path in ("torch", "native")}
    with torch.inference_mode():
        for cache in caches.values():  # every prompt but its last token, through the model
            for p, row in zip(prompts, rows):
                model(torch.tensor([p[:-1]]), cache=cache.bind([row], [0], [len(p) - 1]))
        want = [model(torch.tensor([p[-1:]]), cache=caches["torch"].bind([row], [len(p) - 1], [1]))[0][0, -1]
                for p, row in zip(prompts, rows)]
        got = step([p[-1] for p in prompts], rows, [len(p) - 1 for p in prompts], caches["native"])
    want = torch.stack(want).float()
    assert got.shape == (3, model.lm_head.weight.size(0))
    got = got[:, :config.vocab_size]
    # measured: float32 2e-7; bf16 0.6-1.0% (PyTorch rounds every activation to bf16, C only the cache and a
    # product's inputs)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert ((got - want).abs().max() / want.abs().max()).item() < tol
    for name in ("k", "v"):
        a, b = getattr(caches["native"], name).float(), getattr(caches["torch"], name).float()
        assert ((a - b).abs().max() / b.abs().max()).item() < tol, name


@needs_native
def test_the_engine_decodes_in_c_where_native_is_the_kernel_and_in_pytorch_elsewhere(monkeypatch):
    model = strong_tiny_model()
    calls = []
    real = native.DecodeStep.__call__
    monkeypatch.setattr(native.DecodeStep, "__call__", lambda self, *a: calls.append(a) or real(self, *a))
    runs = {}
    for kernel in ("native", "converted"):
        force_int8_kernel(monkeypatch, kernel, torch.float32)
        engine = Generator(model, dtype="float32", quantize="int8")
        runs[kernel] = engine.generate([[1, 2, 3], [4] * 9], 10, do_sample=False)
        assert (engine._native_step is not None) == (kernel == "native")
    assert len(calls) == 9  # one per decode step of the native run; its prefill is PyTorch's
    assert runs["native"] == runs["converted"]  # wide logit margins: the same greedy tokens


@needs_native
def test_a_model_of_another_layout_decodes_in_pytorch(monkeypatch):
    force_int8_kernel(monkeypatch, "native", torch.float32)
    model = strong_tiny_model()
    monkeypatch.setattr(native.DecodeStep, "__init__", lambda self, m: (_ for _ in ()).throw(AttributeError()))
    engine = Generator(model, dtype="float32", quantize="int8")
    assert engine.generate([[1, 2, 3]], 5, do_sample=False)
    assert engine._native_step is None


def test_native_is_chosen_only_where_it_works(monkeypatch):
    monkeypatch.setattr(native, "works", lambda: False)
    for dtype in (torch.float32, torch.bfloat16):
        assert cpu_kernels.int8_decode_kernel.__wrapped__("cpu", dtype) != "native"


@needs_native
def test_bf16_engine_decodes_in_c_where_native_is_measured_fastest(monkeypatch):
    model = strong_tiny_model()
    runs = {}
    for kernel in ("native", "packed"):
        monkeypatch.setattr(cpu_kernels, "bf16_decode_kernel", lambda rows=1, kernel=kernel: kernel)
        engine = Generator(model, dtype="bfloat16")
        runs[kernel] = engine.generate([[1, 2, 3], [4] * 9], 10, do_sample=False)
        assert (engine._native_step is not None) == (kernel == "native")
    assert runs["native"] == runs["packed"]  # wide logit margins: the same greedy tokens


def test_bf16_decode_kernel_is_one_that_works_here(monkeypatch):
    assert cpu_kernels.bf16_decode_kernel(1) in cpu_kernels.BF16_KERNELS
    monkeypatch.setattr(native, "works", lambda: False)
    monkeypatch.setattr(cpu_kernels, "packed_linear_works", lambda dtype: False)
    assert cpu_kernels.bf16_decode_kernel.__wrapped__(1) == "plain"
    monkeypatch.setattr(cpu_kernels, "bf16_decode_kernel", lambda rows=1: "plain")
    assert cpu_kernels.bf16_decodes_faster.__wrapped__(1) is False  # plain bf16 repacks every weight: never
