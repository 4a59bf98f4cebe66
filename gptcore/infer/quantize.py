"""Weight-only int8 quantization, as a module swap (gpt-fast's way): every nn.Linear, the tied output head included,
becomes an Int8Linear whose int8 weight and per-output-channel scales are buffers in the state dict.

Decoding reads every weight once per token, so it is bound by memory bandwidth: int8 weights are half the bytes of
bf16 and a quarter of fp32. Activations stay in the model's dtype between layers; inside a layer, the kernel this
machine runs fastest (cpu_kernels.int8_decode_kernel) may quantize them to 8 bits too, as CTranslate2 does. Each
output channel (a row of the weight) gets its own scale, max |w| / 127, so one large row doesn't cost the others
their precision.
"""

import torch
import torch.nn as nn

from . import cpu_kernels, native


def quantize_weight(weight) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (out, in), float -> (int8 weight (out, in), scales (out,) in weight's dtype): w ~ int8 * scale."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales.to(weight.dtype)


class Int8Linear(nn.Module):
    """y = x @ (int8 weight * scales).T + bias, in x's dtype; weight, scales and bias are buffers."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=torch.float32, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self._prepared = None  # ((kernel, the buffers' data_ptrs), the weight prepared for it): not in the state dict

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        w = linear.weight
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, w.dtype, w.device)
        module.weight, module.scales = quantize_weight(w)
        if linear.bias is not None:
            module.bias = linear.bias.detach().clone()
        return module

    def forward(self, x):
        """(..., in_features) -> (..., out_features)."""
        kernel, prepared = self._prepared_weight(x)
        if prepared is not None:
            # a decode step's product goes straight to its kernel: at batch 1 the path through int8_linear cost
            # ~20 us per product in Python, ~10% of a GPT-2 124M step's products (measured on 1 thread)
            if kernel == "dynamic":
                return cpu_kernels.dynamic_int8_linear(x, prepared)
            return native.linear(x, prepared)
        return cpu_kernels.int8_linear(x, self.weight, self.scales, self.bias)

    def _prepared_weight(self, x):
        """(kernel, the buffers prepared for it) when x's product is a decode step's (at most FEW_ROWS rows) and
        this CPU's choice for it is a kernel that prepares its weight (cpu_kernels.PREPARED), else (None, None).
        Prepared on first use, and again after load_state_dict or when a buffer is replaced (.to(), assignment)."""
        if x.numel() > cpu_kernels.FEW_ROWS * self.in_features or x.device.type != "cpu":
            return None, None
        kernel = cpu_kernels.int8_decode_kernel("cpu", x.dtype)
        if kernel not in cpu_kernels.PREPARED:
            return None, None
        source = kernel, *(t.data_ptr() for t in (self.weight, self.scales, self.bias) if t is not None)
        if self._prepared is None or self._prepared[0] != source:
            self._prepared = source, cpu_kernels.prepare_int8(kernel, self.weight, self.scales, self.bias)
        return kernel, self._prepared[1]

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)  # copies into the buffers in place: same data_ptr
        self._prepared = None


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replaces every nn.Linear of model by an Int8Linear, in place, and returns model. A head tied to the token
    embedding gets its own int8 copy; the embedding itself stays as it was (a lookup reads one row per token)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear.from_linear(child))
    return model
