"""The base of every QAT quantizer: bit width, the data-dependent first-batch initialisation, the export record.

    q = LsqActivation(bits=4)            # any ActivationQuantizer
    q.initialize(batch)                  # or let the first forward do it; `initialized` is in the state_dict
    info = q.export_info()               # QuantInfo: what the ONNX exporter writes

Activation quantizers decide once, from the first batch they see, whether their input is signed (any value
< 0) or unsigned (post-ReLU, post-softmax). The official codes hard-code this per layer position (OFQ: fc2 and
softmax unsigned; TBT: fc2 unsigned); a data-driven choice gives the same answer for those positions and also
covers CNNs. Both facts are buffers, so a reloaded checkpoint is never re-initialised (methods.md §10.3).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

SIGN_ZERO = 1  # every binarizer maps 0 to +1, so a binary tensor packs into one bit (bit 1 = +1)


def sign(x: Tensor) -> Tensor:
    """sign(x) in {-1, +1} with sign(0) = +1 (torch.sign and ONNX Sign give 0 for 0)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def straight_through(forward: Tensor, x: Tensor) -> Tensor:
    """`forward` in the forward pass, identity gradient to `x` (STE-id: sg(Q(x)) - sg(x) + x)."""
    return (forward - x).detach() + x


def channel_mean_abs(w: Tensor) -> Tensor:
    """mean |w| over every dim but 0, shaped to broadcast against `w` (one value per output channel)."""
    dims = tuple(range(1, w.dim()))
    return w.abs().mean(dim=dims, keepdim=True) if dims else w.abs()


@dataclass(frozen=True, eq=False)
class QuantInfo:
    """How a quantized tensor is rebuilt: `code = Q(x + shift)`, `value = scale * code + offset`.

    Weights: `codes` holds the integer levels (axis 0 = output channels) and `scale` one value per output
    channel, so `value = scale[c] * codes`. Activations: `scale` is a scalar (or one per token), `shift` and
    `offset` broadcast against the input (None when absent). `pm1` says the codes are ±1 and can be packed
    one bit each; `sign_zero` is the code of an exact 0 (always +1 here). `kind` is "uniform", "binary",
    "ternary" or "float" (the tensor is not quantized; `note` says why).
    """

    kind: str
    bits: int
    scale: Tensor | None = None
    codes: Tensor | None = None
    qmin: int | None = None
    qmax: int | None = None
    signed: bool = True
    shift: Tensor | None = None
    offset: Tensor | None = None
    dynamic_offset: bool = False  # offset = min(x) of each input tensor, computed at run time (TBT 2-bit unsigned)
    pm1: bool = False
    sign_zero: int = SIGN_ZERO
    note: str = ""


class Quantizer(nn.Module):
    """Marker base: every weight or activation quantizer has `bits` (1 = binary, 2 may be ternary, 32 = float)."""

    bits: int = 32


class WeightQuantizer(Quantizer):
    """Maps a latent weight to its quantized value; `codes` gives the integer levels (for oscillation counts)."""

    def codes(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def export_info(self, weight: Tensor) -> QuantInfo:
        raise NotImplementedError


class ActivationQuantizer(Quantizer):
    """A quantizer whose parameters are set from the first batch it sees (or by `initialize`).

    `signed=None` decides signedness from that batch; True/False fixes it. Subclasses implement
    `_init_from(x)` (x detached, signedness already known) and `quantize(x)`.
    """

    def __init__(self, bits: int, signed: bool | None = None) -> None:
        super().__init__()
        self.bits = bits
        self.fixed_signed = signed
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(True if signed is None else signed))
        self._ready = False  # a Python mirror of `initialized`: no data-dependent branch in forward
        self._broadcast_after = False  # set by init_quantizers, which broadcasts rank 0's values afterwards

    def initialize(self, x: Tensor) -> None:
        """Set the data-dependent parameters from batch `x` (overwrites any earlier initialisation)."""
        with torch.no_grad():
            x = x.detach()
            if self.fixed_signed is None:
                self.signed.fill_(bool((x < 0).any()))
            self._init_from(x)
            self.initialized.fill_(True)
        self._ready = True

    @property
    def is_signed(self) -> bool:
        return bool(self.signed)

    def forward(self, x: Tensor) -> Tensor:
        if not self._ready:
            if not self._broadcast_after and torch.distributed.is_available() \
                    and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
                log.warning("%s initialised from this process's batch only, so replicas differ; call "
                            "edgebin.quant.qat.init_quantizers on every rank first", type(self).__name__)
            self.initialize(x)
        return self.quantize(x)

    def _init_from(self, x: Tensor) -> None:
        pass

    def quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def export_info(self) -> QuantInfo:
        raise NotImplementedError

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # parameters whose shape comes from the data (per-token steps) take the checkpoint's shape
        for name, param in self.named_parameters(recurse=False):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != param.shape:
                param.data = torch.empty_like(saved, device=param.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._ready = bool(self.initialized)

    def extra_repr(self) -> str:
        state = ("signed" if self.is_signed else "unsigned") if self._ready else "not initialized"
        return f"bits={self.bits}, {state}"


def per_channel(t: Tensor, channel_dim: int) -> Tensor:
    """A (C,) parameter viewed to broadcast against an input whose channels are at `channel_dim`.

    channel_dim 1 (conv input, B×C×H×W) gives (C, 1, 1); -1 (linear input, ...×C) gives (C,). Parameters stay
    1-D, so optimizers that decay only 2-D+ tensors leave them alone.
    """
    return t.view(-1, 1, 1) if channel_dim == 1 else t
