"""Device names are checked against this machine, and the CPU matmul ceiling behind MFU is measured once and kept."""

import json

import pytest
import torch

from gptcore.device import check_device, cpu_matmul_peak, cpu_model, matmul_peak_cache_path
from gptcore.errors import GPTCoreError


@pytest.mark.parametrize("name, message", [
    ("tpu", "unknown device 'tpu': use cpu, cuda, cuda:N or mps"),
    ("", "unknown device '': use cpu, cuda, cuda:N or mps"),
    ("meta", "device 'meta' is not supported"),
])
def test_unknown_devices_are_one_line(name, message):
    with pytest.raises(GPTCoreError, match=message):
        check_device(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_so():
    with pytest.raises(GPTCoreError, match="no CUDA GPU .*use --device cpu"):
        check_device("cuda")


def test_cpu_is_always_there():
    assert check_device("cpu") == "cpu"


def test_cpu_ceiling_is_measured_once_per_cpu_and_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path))
    flops, source = cpu_matmul_peak(torch.float32)
    assert flops > 1e8 and source.startswith("measured now")
    with open(matmul_peak_cache_path()) as f:
        cache = json.load(f)
    [key] = cache
    assert key.startswith(f"{cpu_model()} | float32 | {torch.get_num_threads()} threads")
    # the kept number comes back as it is: two runs compare against one ceiling
    again, source = cpu_matmul_peak(torch.float32)
    assert again == flops and source.startswith("measured ") and "kept in" in source
    cache[key]["flops"] = 123.0  # what is read is the file's number, not a fresh timing
    (tmp_path / "matmul_peak.json").write_text(json.dumps(cache))
    assert cpu_matmul_peak(torch.float32)[0] == 123.0


def test_unreadable_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path))
    (tmp_path / "matmul_peak.json").write_text("{not json")
    flops, source = cpu_matmul_peak(torch.float32)
    assert flops > 1e8 and source.startswith("measured now")
