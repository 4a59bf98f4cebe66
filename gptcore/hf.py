"""GPT-2 weights in the Hugging Face format: config.json plus model.safetensors (or pytorch_model.bin).

Plain functions over dicts and state dicts: model.py builds the GPT, so this module never imports it.

Hugging Face's GPT-2 stores c_attn, c_proj and c_fc as Conv1D, i.e. (in, out): the transpose of nn.Linear.
OpenAI's own uploads have no 'transformer.' prefix on their keys; files saved by transformers do.
"""

import json
import os

import torch

from .errors import GPTCoreError
from .fileio import atomic_path, write_json

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _resolve(name_or_dir: str) -> str:
    if os.path.isdir(name_or_dir):
        return name_or_dir
    if name_or_dir not in HUB_NAMES:
        raise GPTCoreError(f"'{name_or_dir}' is neither a folder nor a GPT-2 name; names: {', '.join(HUB_NAMES)}")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(f"openai-community/{name_or_dir}", allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # offline, hub down, or no huggingface_hub: all end the same way for the user
        raise GPTCoreError(f"could not download '{name_or_dir}' from the Hugging Face Hub ({type(e).__name__}); "
                           "when offline, pass a local folder with config.json and model.safetensors") from None


def config_from_hf(hf: dict) -> dict:
    """Checks that a Hugging Face config.json describes a plain GPT-2; returns our GPTConfig's shape fields."""
    if hf.get("model_type") != "gpt2":
        raise GPTCoreError(f"config.json has model_type '{hf.get('model_type')}', but only 'gpt2' models can be loaded")
    checks = {
        "activation_function": ("gelu_new", hf.get("activation_function", "gelu_new")),
        "n_inner": (None, hf.get("n_inner") if hf.get("n_inner") != 4 * hf.get("n_embd", 0) else None),
        "layer_norm_epsilon": (1e-5, hf.get("layer_norm_epsilon", 1e-5)),
        "scale_attn_weights": (True, hf.get("scale_attn_weights", True)),
        "scale_attn_by_inverse_layer_idx": (False, hf.get("scale_attn_by_inverse_layer_idx", False)),
        "tie_word_embeddings": (True, hf.get("tie_word_embeddings", True)),
    }
    for key, (want, got) in checks.items():
        if want != got:
            raise GPTCoreError(f"config.json sets {key}={got!r}; GPT-2 as built here needs {want!r}")
    return dict(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                n_head=hf["n_head"], n_embd=hf["n_embd"], bias=True)


def _read_state(directory: str) -> dict:
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            try:
                if name.endswith(".safetensors"):
                    from safetensors.torch import load_file
                    return load_file(path)
                return torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise GPTCoreError(f"cannot read {path} ({type(e).__name__}: {e}); the file is damaged, download it again") from None
    raise GPTCoreError(f"{directory} has no weights: expected one of {', '.join(WEIGHT_FILES)}")


def load_hf_weights(name_or_dir: str) -> tuple[dict, dict]:
    """From a Hugging Face GPT-2 folder or name: (GPTConfig fields, state dict in gptcore.GPT's names).

    wte keeps its vocab_size rows and lm_head is left out: padding and tying are the model's business.
    """
    directory = _resolve(name_or_dir)
    config_path = os.path.join(directory, "config.json")
    if not os.path.exists(config_path):
        raise GPTCoreError(f"{directory} has no config.json; a Hugging Face GPT-2 folder has config.json and model.safetensors")
    with open(config_path) as f:
        config = config_from_hf(json.load(f))
    hf_state = {k.removeprefix("transformer."): v for k, v in _read_state(directory).items()}

    state = {}
    expected = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    for i in range(config["n_layer"]):
        expected += [f"h.{i}.{name}" for name in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias",
                                                     "attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias",
                                                     "mlp.c_proj.bias", *CONV1D_WEIGHTS)]
    missing = [k for k in expected if k not in hf_state]
    if missing:
        raise GPTCoreError(f"{directory}: the weights lack {len(missing)} of {len(expected)} tensors "
                           f"(first: {missing[0]}); the folder is partial, download it again")
    for key in expected:
        tensor = hf_state[key].float()
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state["transformer." + key] = tensor.contiguous()
    wte = state["transformer.wte.weight"]
    if wte.shape != (config["vocab_size"], config["n_embd"]):
        raise GPTCoreError(f"{directory}: wte has shape {tuple(wte.shape)}, config.json says "
                           f"({config['vocab_size']}, {config['n_embd']})")
    return config, state


def save_hf_weights(model, directory: str):
    """Writes model.safetensors and config.json so that transformers.GPT2LMHeadModel.from_pretrained(directory) works."""
    from safetensors.torch import save_file
    c = model.config
    if not c.bias:
        raise GPTCoreError("Hugging Face GPT-2 has biases everywhere; a model built with bias=False cannot be saved in its format")
    tensors = {}
    for key, tensor in model.state_dict().items():
        key = key.removeprefix("_orig_mod.")  # a torch.compile'd model
        if key == "lm_head.weight":
            continue  # tied to wte; transformers re-ties it on load
        tensor = tensor.detach().float().cpu()
        name = key.removeprefix("transformer.")
        if name == "wte.weight":
            tensor = tensor[:c.vocab_size]  # padded rows never leave gptcore
        elif name.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        tensors["transformer." + name] = tensor.contiguous()
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
        "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "resid_pdrop": c.pdrop("resid"), "embd_pdrop": c.pdrop("embd"), "attn_pdrop": c.pdrop("attn"),
        "tie_word_embeddings": True, "bos_token_id": c.vocab_size - 1, "eos_token_id": c.vocab_size - 1,
    }
    with atomic_path(os.path.join(directory, "model.safetensors")) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_json(os.path.join(directory, "config.json"), hf_config, indent=2)
