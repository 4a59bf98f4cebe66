"""int8 weight-only quality on the committed checkpoint: val loss on the pystdlib val split, int8 vs fp32."""

import copy
import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gptcore import corpora
from gptcore.checkpoint import load_checkpoint, model_from_checkpoint
from gptcore.data import read_tokens
from gptcore.infer.quantize import quantize_int8

from test_infer_kernels import force_int8_kernel  # every product on one int8 kernel

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoint" / "quickstart.pt"


@pytest.fixture(scope="module")
def val_tokens(tmp_path_factory):
    """The first 16 x 129 tokens of pystdlib's val split, prepared as data/prepare.py does (about 5M tokens)."""
    out = tmp_path_factory.mktemp("pystdlib")
    corpora.prepare("pystdlib", out_dir=str(out), workers=1)
    first = sorted(glob.glob(os.path.join(out, "val_*.bin")))[0]
    return torch.from_numpy(read_tokens(first, 0, 16 * 129).astype(np.int64)).view(16, 129)


def val_loss(model, tokens) -> float:
    """Mean next-token cross-entropy with the logits of model.lm_head (quantized or not)."""
    hidden = {}
    handle = model.transformer.ln_f.register_forward_hook(lambda module, args, out: hidden.update(x=out))
    with torch.no_grad():
        model(tokens[:, :-1])
        handle.remove()
        logits = model.lm_head(hidden["x"])[..., :model.config.vocab_size].float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1)).item()


@pytest.mark.parametrize("kernel, dtype", [("native", torch.float32), ("native", torch.bfloat16),
                                           ("dynamic", torch.float32), ("dynamic", torch.bfloat16),
                                           ("weight_only", torch.bfloat16), ("converted", torch.float32),
                                           ("converted", torch.bfloat16)])
def test_int8_val_loss_within_one_percent_of_fp32_on_the_committed_checkpoint(val_tokens, monkeypatch, kernel, dtype):
    """Every int8 kernel the engine may pick (cpu_kernels.INT8_KERNELS), forced for every product (measured: within
    0.05% on each)."""
    model, _ = model_from_checkpoint(load_checkpoint(str(CHECKPOINT)))
    model = model.float().eval()
    assert model.config.block_size >= 128
    fp32 = val_loss(model, val_tokens)
    force_int8_kernel(monkeypatch, kernel, dtype)
    int8 = val_loss(quantize_int8(copy.deepcopy(model).to(dtype)), val_tokens)
    assert fp32 < 5  # the trained model, not noise (uniform would be ln 50257 = 10.8)
    assert abs(int8 - fp32) / fp32 < 0.01, (fp32, int8)
