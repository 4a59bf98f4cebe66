"""GPT-2, as published: a stack of pre-LayerNorm Transformer blocks over learned token and position embeddings.

Names follow OpenAI's checkpoint keys (wte, wpe, h.N.attn.c_attn, ln_f), so the weights map one to one.
References: GPT-1 (Radford et al. 2018), GPT-2 (Radford et al. 2019).
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn import functional as F

from . import hf
from .errors import GPTCoreError, check_range

# model_type -> (n_layer, n_head, n_embd): OpenAI's GPT-1 and four GPT-2 sizes, Gopher's smallest, minGPT's small ones
PRESETS = {
    "openai-gpt": (12, 12, 768),  # 117M
    "gpt2": (12, 12, 768),  # 124M
    "gpt2-medium": (24, 16, 1024),  # 350M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1558M
    "gopher-44m": (8, 16, 512),
    "gpt-mini": (6, 6, 192),
    "gpt-micro": (4, 4, 128),
    "gpt-nano": (3, 3, 48),
}
SIZES = ("n_layer", "n_head", "n_embd")


@dataclass
class GPTConfig:
    """The model's shape. Its size comes from model_type (a name in PRESETS) or from n_layer, n_head and n_embd;
    with neither, it is GPT-2 (124M). Fields may be set after construction (minGPT style): GPT(config) checks them.

    dropout applies everywhere; minGPT's embd_pdrop, resid_pdrop and attn_pdrop, when set, override it per site.
    """
    model_type: str | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    vocab_size: int | None = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
    block_size: int | None = 1024  # context length
    dropout: float = 0.0
    embd_pdrop: float | None = None
    resid_pdrop: float | None = None
    attn_pdrop: float | None = None
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2 has them

    def __post_init__(self):
        if self.model_type is not None or None not in (self.n_layer, self.n_head, self.n_embd):
            self.resolved()  # fail at construction when the shape is already complete

    def resolved(self) -> "GPTConfig":
        """A copy with n_layer, n_head and n_embd filled in, after checking every field; GPT(config) uses it."""
        sizes = {k: getattr(self, k) for k in SIZES}
        if self.model_type is not None:
            if self.model_type not in PRESETS:
                raise GPTCoreError(f"unknown model_type '{self.model_type}'; known: {', '.join(PRESETS)}")
            preset = dict(zip(SIZES, PRESETS[self.model_type]))
            clash = [f"{k}={v}" for k, v in sizes.items() if v is not None and v != preset[k]]
            if clash:
                raise GPTCoreError(f"model_type='{self.model_type}' sets n_layer, n_head and n_embd, but {', '.join(clash)} "
                                   f"was also given: set either model_type or the sizes, not both")
            sizes = preset
        elif None in sizes.values():
            sizes = {k: v if v is not None else d for (k, v), d in zip(sizes.items(), PRESETS["gpt2"])}
        for name in ("vocab_size", "block_size"):
            if getattr(self, name) is None:
                raise GPTCoreError(f"config.{name} is not set; set it (from your data) before building the GPT")
        for name, value in {**sizes, "vocab_size": self.vocab_size, "block_size": self.block_size}.items():
            check_range(name, value, kind=int, low=1)
        for name in ("dropout", "embd_pdrop", "resid_pdrop", "attn_pdrop"):
            if name == "dropout" or getattr(self, name) is not None:
                check_range(name, getattr(self, name), low=0, high=1, high_open=True)
        if not isinstance(self.bias, bool):
            raise GPTCoreError(f"bias={self.bias!r} is not allowed: it must be True or False")
        if sizes["n_embd"] % sizes["n_head"]:
            raise GPTCoreError(f"n_embd={sizes['n_embd']} is not divisible by n_head={sizes['n_head']}: "
                               "each head gets n_embd / n_head channels")
        return replace(self, **sizes) if sizes != {k: getattr(self, k) for k in SIZES} else self

    def pdrop(self, site: str) -> float:
        """The dropout probability at site 'embd', 'resid' or 'attn'."""
        p = getattr(self, f"{site}_pdrop")
        return self.dropout if p is None else p

    @property
    def padded_vocab_size(self) -> int:
        """The embedding table is padded to a multiple of 64 (50257 -> 50304): matmuls run faster."""
        return (self.vocab_size + 63) // 64 * 64

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """The sizes of model_type `name`, written out as n_layer, n_head and n_embd."""
        if name not in PRESETS:
            raise GPTCoreError(f"unknown model preset '{name}'; known presets: {', '.join(PRESETS)}")
        return cls(**{**dict(zip(SIZES, PRESETS[name])), **overrides})


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.pdrop("attn")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_PROJECTION = True
        self.resid_dropout = nn.Dropout(config.pdrop("resid"))

    def forward(self, x, cache=None):
        """(B, T, C) -> (B, T, C). cache: this layer's view of a generation KV cache (gptcore/infer/cache.py)."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is None:
            # flash attention on GPU; the causal mask is never materialized
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        else:
            k, v, mask, causal = cache.update(k, v)  # what these queries see of their sequences so far
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # the approximation OpenAI's weights were trained with
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.RESIDUAL_PROJECTION = True
        self.dropout = nn.Dropout(config.pdrop("resid"))

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm: the residual stream is never normalized, only each sub-block's input."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config = config.resolved()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.pdrop("embd")),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        # -inf logits for the padding ids: softmax and loss ignore them exactly, at no cost inside the matmul
        pad = config.padded_vocab_size - config.vocab_size
        self.register_buffer("vocab_mask", torch.cat([torch.zeros(config.vocab_size), torch.full((pad,), -math.inf)]),
                             persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def get_default_config() -> GPTConfig:
        """minGPT's starting point: set model_type (or n_layer, n_head, n_embd), vocab_size and block_size, then GPT(config)."""
        return GPTConfig(vocab_size=None, block_size=None, embd_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_PROJECTION", False):
                std *= (2 * self.config.n_layer) ** -0.5  # two residual additions per block
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, cache=None):
        """idx (B, T) long -> logits (B, T, vocab_size), and the mean cross-entropy over targets != -1.

        cache: generation only, a KV cache the caller owns (gptcore/infer/cache.py): the tokens sit at
        cache.positions (B, T), attention also sees the keys cached before them, and the logits are those of one
        column per row, cache.last (None: the last one): (B, 1, vocab_size).
        """
        x = self.hidden_states(idx, cache)
        if cache is None:
            # the head is the tied token embedding; F.linear adds the vocab mask inside the matmul
            logits = F.linear(x, self.transformer.wte.weight, self.vocab_mask.to(x.dtype))  # (B, T, padded_vocab)
        else:  # one column per row; lm_head may be a packed or int8 layer in the engine's inference copy
            x = x[:, -1:] if cache.last is None else x[torch.arange(x.size(0), device=x.device), cache.last][:, None]
            logits = self.lm_head(x)  # (B, 1, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits[..., :self.config.vocab_size], loss  # padded ids are never predicted

    def hidden_states(self, idx, cache=None):
        """idx (B, T) long -> the final LayerNorm's output (B, T, n_embd): everything but the head.

        Scoring (gptcore/eval) applies the head only at the positions it needs, instead of to all T.
        """
        B, T = idx.size()
        if cache is None:
            if T > self.config.block_size:
                raise GPTCoreError(f"sequence of length {T} is longer than block_size={self.config.block_size}; "
                                   f"crop the input to the last {self.config.block_size} tokens")
            if not torch.compiler.is_compiling() and idx.numel() and \
                    not 0 <= int(idx.min()) <= int(idx.max()) < self.config.vocab_size:
                raise GPTCoreError(f"token ids must lie in [0, {self.config.vocab_size}), "
                                   f"got {int(idx.min())}..{int(idx.max())}")
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        else:  # the generation engine checked the ids and positions once, on the host: no sync per token
            pos = cache.positions
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        layers = cache.layers if cache is not None else [None] * len(self.transformer.h)
        for block, layer_cache in zip(self.transformer.h, layers):
            x = block(x, layer_cache)
        return self.transformer.ln_f(x)

    # ---- generation (gptcore/infer/engine.py) ----

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, do_sample: bool = False, top_k=None,
                 top_p=None, stop_token: int | None = None, seed: int | None = None,
                 generator: torch.Generator | None = None, dtype=None):
        """(B, T) prompt ids -> (B, T + max_new_tokens) ids, as minGPT: greedy unless do_sample.

        Runs on the device's fastest generation path with no preparation: a gptcore.infer.Generator kept for this
        model, whose weights (in dtype; default: the fastest exact one here, see device.generation_dtype) are
        rebuilt whenever this model's parameters have changed since the last call, so a model in training never
        samples from stale weights. temperature 0 is greedy too. stop_token: rows stop at this id and are padded
        with it once stopped; the batch stops when every row has. seed or generator make sampling reproducible.
        Past block_size, the context restarts from its last block_size // 2 tokens.
        """
        from .infer.engine import generator_for
        engine = generator_for(self, dtype)
        return engine.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                               do_sample=do_sample, stop_token=stop_token, seed=seed, generator=generator)

    # ---- accounting ----

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without the position embeddings (wte counts: it is also the output head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: 6 per weight, plus attention (PaLM, appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * T

    # ---- Hugging Face interop (see gptcore/hf.py) ----

    @classmethod
    def from_pretrained(cls, name_or_dir: str, **overrides) -> "GPT":
        """OpenAI's GPT-2 from a Hugging Face folder, or by name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) online.

        overrides: only dropout settings (dropout, embd_pdrop, resid_pdrop, attn_pdrop); the shape is the weights'.
        """
        shape, state = hf.load_hf_weights(name_or_dir)
        for key in overrides:
            if key != "dropout" and not key.endswith("_pdrop"):
                raise GPTCoreError(f"only dropout can be overridden for pretrained weights, not '{key}'")
        model = cls(GPTConfig(**shape, **overrides))
        # the head is tied to wte, whose rows past vocab_size are padding (see padded_vocab_size)
        pad = model.config.padded_vocab_size - model.config.vocab_size
        state["transformer.wte.weight"] = state["lm_head.weight"] = F.pad(state["transformer.wte.weight"], (0, 0, 0, pad))
        model.load_state_dict(state)
        return model

    def save_pretrained(self, directory: str):
        """Writes config.json + model.safetensors that transformers.GPT2LMHeadModel loads."""
        hf.save_hf_weights(self, directory)
