"""The model against independent references: transformers' GPT-2 for logits, float64 math for the loss."""

import json
import math

import huggingface_hub
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from gptcore import GPT, GPTConfig, GPTCoreError
from gptcore.train.loop import configure_optimizer

SMALL = dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=1000)


def hf_model(n_layer, n_head, n_embd, block_size, vocab_size, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=block_size,
                                     vocab_size=vocab_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF zero-inits biases and sets LayerNorm to identity; randomize all so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def ids(config, B=2, T=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["vocab_size"], (B, T or config["block_size"]), generator=g)


@pytest.mark.parametrize("cfg", [SMALL, dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)],
                         ids=["small", "124M"])
def test_logits_match_transformers_both_directions(tmp_path, cfg):
    x = ids(cfg, B=1 if cfg["n_layer"] == 12 else 2, T=min(cfg["block_size"], 128))

    # Hugging Face folder -> GPT.from_pretrained
    ref = hf_model(**cfg)
    ref.save_pretrained(tmp_path / "hf")
    ours = GPT.from_pretrained(str(tmp_path / "hf")).eval()
    with torch.no_grad():
        want = ref(x).logits
        got, _ = ours(x)
    assert got.shape == want.shape == (*x.shape, cfg["vocab_size"])
    assert (got - want).abs().max().item() < 1e-4

    # our random init -> save_pretrained -> GPT2LMHeadModel.from_pretrained
    torch.manual_seed(2)
    mine = GPT(GPTConfig(**cfg)).eval()
    mine.save_pretrained(str(tmp_path / "ours"))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "ours")).eval()
    with torch.no_grad():
        want, _ = mine(x)
        got = theirs(x).logits
    assert (got - want).abs().max().item() < 1e-4


def test_openai_style_keys_and_pytorch_bin(tmp_path):
    """OpenAI's uploads have no 'transformer.' prefix; older folders have pytorch_model.bin instead of safetensors."""
    ref = hf_model(**SMALL)
    ref.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "model.safetensors").items()}
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    x = ids(SMALL)
    with torch.no_grad():
        assert (GPT.from_pretrained(str(tmp_path)).eval()(x)[0] - ref(x).logits).abs().max() < 1e-4


def test_padded_vocab_never_leaves_the_model(tmp_path):
    model = GPT(GPTConfig(**SMALL))
    assert model.transformer.wte.weight.shape[0] == 1024  # 1000 padded to a multiple of 64
    assert model(ids(SMALL))[0].shape[-1] == 1000
    model.save_pretrained(str(tmp_path))
    assert load_file(tmp_path / "model.safetensors")["transformer.wte.weight"].shape == (1000, 64)


def test_loss_is_mean_cross_entropy_ignoring_minus_one():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL)).double()
    x = ids(SMALL)
    y = ids(SMALL, seed=3)
    y[0, :5] = -1
    logits, loss = model(x, y)
    # float64 reference: -log softmax at the target, averaged over the kept positions
    logp = logits.double().log_softmax(-1)
    keep = y != -1
    want = -logp[keep].gather(-1, y[keep].unsqueeze(-1)).mean()
    assert torch.allclose(loss.double(), want, rtol=1e-10)


def test_init_follows_gpt2():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=5000, block_size=64)
    model = GPT(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert abs(model.transformer.wte.weight.std().item() - 0.02) < 1e-3
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    want = 0.02 / math.sqrt(2 * config.n_layer)
    for name in ("attn", "mlp"):
        assert abs(getattr(model.transformer.h[3], name).c_proj.weight.std().item() - want) < 5e-4
    assert model.transformer.h[0].attn.c_attn.bias.abs().max() == 0


def test_presets_and_accounting():
    model = GPT(GPTConfig.from_preset("gpt2"))
    assert model.num_params() == 124_439_808 - 1024 * 768 + (50304 - 50257) * 768  # HF's count, minus wpe, plus padding
    assert model.flops_per_token(1024) == 6 * model.num_params() + 12 * 12 * 768 * 1024
    assert GPTConfig.from_preset("gpt-nano", block_size=64).block_size == 64
    assert (GPTConfig.from_preset("gpt2-xl").n_layer, GPTConfig.from_preset("gpt2-xl").n_embd) == (48, 1600)


def test_optimizer_decays_only_matrices():
    model = GPT(GPTConfig(**SMALL))
    opt = configure_optimizer(model, weight_decay=0.1, learning_rate=1e-3, device_type="cpu")
    decay, no_decay = opt.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decay["fused"]


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt-nano", vocab_size=50, block_size=16))
    x = torch.randint(0, 50, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = configure_optimizer(model, weight_decay=0.0, learning_rate=1e-2)
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.05


# ---- bad input: one clear error each ----

def test_unknown_preset_lists_known_names():
    with pytest.raises(GPTCoreError, match="unknown model preset 'gpt5'.*gpt2-medium.*gpt-nano"):
        GPTConfig.from_preset("gpt5")


def test_sequence_longer_than_block_size():
    model = GPT(GPTConfig(**SMALL))
    with pytest.raises(GPTCoreError, match="longer than block_size=32"):
        model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("bad", [1000, -1])
def test_token_ids_out_of_range(bad):
    model = GPT(GPTConfig(**SMALL))
    x = torch.zeros(1, 8, dtype=torch.long)
    x[0, 3] = bad
    with pytest.raises(GPTCoreError, match=r"token ids must lie in \[0, 1000\)"):
        model(x)


def test_missing_or_partial_weight_folder(tmp_path):
    with pytest.raises(GPTCoreError, match="neither a folder nor a GPT-2 name"):
        GPT.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(GPTCoreError, match="no config.json"):
        GPT.from_pretrained(str(tmp_path))
    hf_model(**SMALL).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(GPTCoreError, match="partial"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(GPTCoreError, match="damaged"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(GPTCoreError, match="has no weights"):
        GPT.from_pretrained(str(tmp_path))


def test_config_that_is_not_gpt2(tmp_path):
    hf_model(**SMALL).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(GPTCoreError, match="model_type 'llama'"):
        GPT.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(GPTCoreError, match="activation_function='relu'"):
        GPT.from_pretrained(str(tmp_path))


def test_hub_name_offline_fails_clearly(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # CI may or may not be online
    with pytest.raises(GPTCoreError, match="could not download 'gpt2'.*local folder"):
        GPT.from_pretrained("gpt2")
