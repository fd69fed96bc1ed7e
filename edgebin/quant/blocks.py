"""Blocks of a captured graph for block-wise reconstruction (BRECQ-style), and a runner for one block at a time.

    blocks = find_blocks(gm, {"q_stem", "q_c1", "q_fc"})     # cut where exactly one activation is live
    runner = BlockRunner(gm, x[:32])                        # batch 32, sizes recorded from one whole-graph run
    with float_mode(gm):
        y_fp = runner.run_all(blocks[0], x)                 # the block's FP32 output
    runner.weights = {"q_c1": lambda: w}                    # override a layer's weight (a learned one)
    loss = F.mse_loss(runner.run_block(blocks[0], x[:32]), y_fp[:32])

`edgebin.quant.nupes` fits each block's weights in graph order with these; nothing here is NUPES-specific beyond
the quantized modules (`ActQuant`, `_QuantWeighted`) whose mode `float_mode` switches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx

from edgebin.quant.modules import ActQuant, QuantConv2d, _QuantWeighted
from edgebin.quant.qdq import dequantize_codes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """A run of graph nodes between two points where a single activation is live: `start` holds the block's
    input, `nodes[-1]` its output; `layers` are the modules to fit inside (for NUPES, its layers)."""

    start: fx.Node
    nodes: tuple[fx.Node, ...]
    layers: tuple[str, ...]


def find_blocks(gm: fx.GraphModule, layers: set[str]) -> list[Block]:
    """Cut the graph where exactly one activation value is live (ResNet: the output of each residual block; ViT:
    the residual stream after each sub-block; a plain chain: after each layer), and merge cuts so every block
    holds at least one of `layers` and the ops after a block's last layer (ReLU, pooling, quantizers) join it.

    Sizes (`x.shape[0]` in a reshape) are not activations: `BlockRunner` supplies them for its batch size.
    """
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]
    index = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((index.get(u, len(nodes)) for u in n.users), default=-1) for n in nodes}
    live: set[fx.Node] = set()
    bounds = []
    for i, node in enumerate(nodes):
        live = {m for m in (*live, node) if last_use[m] > i and _is_activation(m)}
        if live == {node}:
            bounds.append(i)
    is_layer = [n.op == "call_module" and n.target in layers for n in nodes]
    cuts = bounds[:1]
    for j, b in enumerate(bounds[1:], start=2):
        nxt = bounds[j] if j < len(bounds) else None
        if any(is_layer[cuts[-1] + 1 : b + 1]) and (nxt is None or any(is_layer[b + 1 : nxt + 1])):
            cuts.append(b)
    blocks = [Block(nodes[lo], tuple(nodes[lo + 1 : hi + 1]),
                    tuple(n.target for n in nodes[lo + 1 : hi + 1] if n.op == "call_module" and n.target in layers))
              for lo, hi in zip(cuts, cuts[1:], strict=False)]
    left = layers - {name for block in blocks for name in block.layers}
    if left:
        log.warning("NUPES: %s sit where several activations are live to the end; they keep data-free codes",
                    ", ".join(sorted(left)))
    return blocks


def _is_activation(node: fx.Node) -> bool:
    """A tensor value (nodes without a recorded value count as tensors: fewer cuts, never a wrong one)."""
    return "val" not in node.meta or isinstance(node.meta["val"], Tensor)


class BlockRunner(fx.Interpreter):
    """Runs one block's nodes on `batch` samples at a time, its input preloaded; `weights` maps a module to a
    weight to use instead of its own.

    Blocks run at one fixed batch size (the last chunk zero-padded): the sizes that the graph computes from its
    input (a batch dimension read for a reshape) are then those of one whole-graph run at that size, recorded
    here, whichever block reads them.
    """

    def __init__(self, gm: fx.GraphModule, example: Tensor) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.batch = len(example)
        self.weights: dict[str, Callable[[], Tensor]] = {}
        self.env = {}
        with torch.no_grad(), float_mode(gm):
            self.run(example)
        self.constants = {n: self.fetch_attr(n.target) if n.op == "get_attr" else self.env[n]
                          for n in gm.graph.nodes if n.op == "get_attr" or n in self.env and not _is_activation(n)}
        self.env = {}

    def call_module(self, target, args, kwargs):
        weight = self.weights.get(target)
        if weight is None:
            return super().call_module(target, args, kwargs)
        module = self.fetch_attr(target)
        bias = dequantize_codes(module.bias_codes, module.bias_scale, module.bias_zero_point, 0)
        if isinstance(module, QuantConv2d):
            return F.conv2d(args[0], weight(), bias, module.stride, module.padding, module.dilation, module.groups)
        return F.linear(args[0], weight(), bias)

    def run_block(self, block: Block, x: Tensor) -> Tensor:
        self.env = {**self.constants, block.start: x}
        for node in block.nodes:
            self.env[node] = self.run_node(node)
        out, self.env = self.env[block.nodes[-1]], {}
        return out

    @torch.no_grad()
    def run_all(self, block: Block, x: Tensor) -> Tensor:
        out = []
        for i in range(0, len(x), self.batch):
            part = x[i : i + self.batch]
            padded = torch.cat([part, part.new_zeros(self.batch - len(part), *part.shape[1:])])
            out.append(self.run_block(block, padded)[: len(part)])
        return torch.cat(out)


@contextlib.contextmanager
def float_mode(gm: fx.GraphModule) -> Iterator[None]:
    """Run `gm` as the FP32 model (BatchNorm folded): quantizers and quantized layers in float mode."""
    modules = [m for m in gm.modules() if isinstance(m, (ActQuant, _QuantWeighted))]
    modes = [m.mode for m in modules]
    for m in modules:
        m.mode = "float"
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.mode = mode
