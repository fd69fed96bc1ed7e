"""Quantization-aware training: StatsQ (+CGA, QKR), LSQ, TBT/BiT, binary (STE, ReSTE, BiPer) and ternary.

    from edgebin.quant import Recipe
    from edgebin.quant import qat

    model = qat.prepare(model, Recipe.for_method("binary", estimator="reste"))   # in place; first/last at 8 bits
    qat.init_quantizers(model, first_batch)          # activation steps from data, before the optimizer
    opt = torch.optim.AdamW(qat.param_groups(model, weight_decay=0.05), lr=5e-4)
    for epoch in range(epochs):
        qat.set_progress(model, epoch / epochs)      # ReSTE's power schedule
        ...                                          # ordinary training steps
    infos = qat.export_infos(model)                  # per layer: bits, scales, codes, sign convention

One file per method family, maths as functions at the top and modules below: statsq.py, lsq.py, tbt.py,
binary.py, ternary.py; qkr.py (attention), cga.py (OFQ's fine-tuning phase), modules.py (QAT conv/linear),
prepare.py (recipe -> modules), training.py (what a training loop calls). methods.md §1, §2, §6, §7 give the
formulas; each module docstring says where edgebin departs from a paper or its code.
"""

from __future__ import annotations

from torch import nn

from edgebin.quant.qat.binary import (
    ApproxSign,
    BinaryActivation,
    BinaryWeight,
    BiPerSign,
    ReSTESign,
    SteSign,
    approx_sign,
    biper_binarize,
    biper_penalty,
    reste_power,
    reste_sign,
    ste_sign,
)
from edgebin.quant.qat.cga import BOUNDARY_RANGE, ConfidenceGuidedAnnealing, cga_frozen_masks
from edgebin.quant.qat.lsq import LsqActivation, LsqWeight, lsq_quantize
from edgebin.quant.qat.modules import LayerQuantInfo, QATConv2d, QATLinear
from edgebin.quant.qat.prepare import QATLayerRecord, handles, make_recipe, prepare, summarize
from edgebin.quant.qat.qkr import QKRAttention, qk_product
from edgebin.quant.qat.quantizer import SIGN_ZERO, ActivationQuantizer, QuantInfo, Quantizer, WeightQuantizer, sign
from edgebin.quant.qat.statsq import StatsQWeight, cga_trainable, statsq_quantize, statsq_scale
from edgebin.quant.qat.tbt import ElasticActivation, TbtWeight, elastic_quantize, tbt_binary, tbt_ternary
from edgebin.quant.qat.ternary import TernaryWeight, twn_ternary
from edgebin.quant.qat.training import (
    OscillationTracker,
    biper_regularizer,
    init_quantizers,
    on_phase,
    param_groups,
    quantizers,
    set_biper_stage,
    set_progress,
)


def export_infos(model: nn.Module) -> dict[str, LayerQuantInfo | dict[str, LayerQuantInfo]]:
    """`export_info()` of every QAT layer and QKR block, by module name (a QKR block gives a dict of parts)."""
    infos: dict = {}
    for name, m in model.named_modules():
        if isinstance(m, QKRAttention):
            infos[name] = m.export_info(name)
        elif isinstance(m, (QATConv2d, QATLinear)) and not any(name.startswith(f"{k}.") for k in infos):
            infos[name] = m.export_info(name)
    return infos


__all__ = [
    "BOUNDARY_RANGE",
    "SIGN_ZERO",
    "ActivationQuantizer",
    "ApproxSign",
    "BiPerSign",
    "BinaryActivation",
    "BinaryWeight",
    "ConfidenceGuidedAnnealing",
    "ElasticActivation",
    "LayerQuantInfo",
    "LsqActivation",
    "LsqWeight",
    "OscillationTracker",
    "QATConv2d",
    "QATLayerRecord",
    "QATLinear",
    "QKRAttention",
    "QuantInfo",
    "Quantizer",
    "ReSTESign",
    "StatsQWeight",
    "SteSign",
    "TbtWeight",
    "TernaryWeight",
    "WeightQuantizer",
    "approx_sign",
    "biper_binarize",
    "biper_penalty",
    "biper_regularizer",
    "cga_frozen_masks",
    "cga_trainable",
    "elastic_quantize",
    "export_infos",
    "handles",
    "init_quantizers",
    "lsq_quantize",
    "make_recipe",
    "on_phase",
    "param_groups",
    "prepare",
    "qk_product",
    "quantizers",
    "reste_power",
    "reste_sign",
    "set_biper_stage",
    "set_progress",
    "sign",
    "statsq_quantize",
    "statsq_scale",
    "ste_sign",
    "summarize",
    "tbt_binary",
    "tbt_ternary",
    "twn_ternary",
]
