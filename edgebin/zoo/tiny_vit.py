"""A tiny DeiT-style vision transformer (Touvron et al., arXiv:2012.12877) for small images.

Patch embedding is a conv with stride = patch size; a class token and learned position embeddings are
added; pre-LN blocks run multi-head self-attention and a GELU MLP; the head reads the class token.
Attention is written with explicit q/k/v/proj `nn.Linear`s, matmuls and `nn.Softmax`, so a quantizer
sees every linear layer and torch.export needs no fused attention kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgebin.errors import UsageError
from edgebin.zoo.blocks import check_channels, pair


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q kᵀ / sqrt(d_head)) v, then an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        attn = self.softmax((q * self.scale) @ k.transpose(-2, -1))
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embed → class token + position embedding → `depth` blocks → LN → head on the class token.

    model = TinyViT(input_size=28, patch_size=4)   # 7×7 patches + 1 class token, dim 64
    logits = model(torch.zeros(1, 1, 28, 28))       # (1, 10)
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int | tuple[int, int] = 28,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        check_channels("tiny_vit", in_channels, num_classes)
        h, w = pair(input_size)
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise UsageError(f"tiny_vit: patch_size {patch_size} must divide input_size {h}×{w}; try 4 or 7 for 28×28")
        if dim % heads:
            raise UsageError(f"tiny_vit: dim {dim} must be a multiple of heads {heads}")
        self.input_shape = (1, in_channels, h, w)
        num_patches = (h // patch_size) * (w // patch_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) embeddings and linear weights, as in DeiT."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
