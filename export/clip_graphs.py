"""The CLIP modules that become ONNX graphs: image (with the V-V stream) and text.

The image graph takes 0..255 RGB pixels and normalises inside, runs the original
transformer unchanged, and beside it a value-value attention stream over the last
blocks (CLIP Surgery / AnomalyCLIP's dual path). Patch tokens are read from that
stream at the tap layers and sent through ln_post and the projection, so they
live in the same space as the text embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from .attention import attention


def tap_name(layer: int) -> str:
    return f"patch_tokens_{layer}"


def check_supported(visual: nn.Module) -> None:
    """The V-V stream needs a plain ViT with class-token pooling and fused-qkv attention."""
    if not isinstance(visual, VisionTransformer):
        raise NotImplementedError(f"only open_clip VisionTransformer towers are supported, got {type(visual).__name__}")
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise NotImplementedError("only class-token pooling (pool_type='tok', no attentional pooler) is supported")
    for i, block in enumerate(visual.transformer.resblocks, start=1):
        if not isinstance(block, ResidualAttentionBlock) or not block.attn.batch_first:
            raise NotImplementedError(f"block {i} is {type(block).__name__}; need batch-first ResidualAttentionBlock")
        attn = block.attn
        if not attn._qkv_same_embed_dim or attn.in_proj_bias is None or attn.bias_k is not None or attn.add_zero_attn:
            raise NotImplementedError(f"block {i}: attention needs one biased q/k/v projection, no bias_k/zero_attn")


def block_forward(block: ResidualAttentionBlock, x: torch.Tensor, vv: torch.Tensor | None, fused: bool = True):
    """One open_clip block on the original stream x (B, L, W), and on the V-V stream when `vv` is given.

    The same computation as open_clip's block (checked against encode_image at
    export), written so that attention is `attention.attention`: one fused node in
    the graph. The V-V stream attends with q = k = v = this block's value
    projection of ln_1(x), the v the original stream computes anyway, and is
    accumulated without MLP.
    """
    attn = block.attn
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (B, L, 3W)
    q, k, v = qkv.chunk(3, dim=-1)
    if vv is not None:
        vv = vv + block.ls_1(attn.out_proj(attention(v, v, v, attn.num_heads, fused=fused)))
    x = x + block.ls_1(attn.out_proj(attention(q, k, v, attn.num_heads, fused=fused)))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, vv


class ClipImageGraph(nn.Module):
    """(B, 3, S, S) float32 RGB 0..255 -> global embedding + patch tokens per tap.

    Outputs, all L2-normalised: `image_embedding` (B, D) and, per tap layer L,
    `patch_tokens_L` (B, N, D) with N = grid * grid in row-major order. Blocks
    from `vv_from` on feed the V-V stream; `vv_from=None` turns it off and taps
    then read the original stream (the ablation and an exact check against
    open_clip's own tokens). `fused`: attention traces as onnxruntime's fused
    MultiHeadAttention (attention.py); False traces plain operators.
    """

    def __init__(
        self, visual: VisionTransformer, mean, std, vv_from: int | None, taps: Sequence[int], fused: bool = True
    ):
        super().__init__()
        check_supported(visual)
        depth = len(visual.transformer.resblocks)
        if not taps or any(not 1 <= t <= depth for t in taps):
            raise ValueError(f"taps {list(taps)} must be block numbers between 1 and {depth}")
        if vv_from is not None and not 1 <= vv_from <= depth:
            raise ValueError(f"--vv-from {vv_from} must be between 1 and {depth}")
        self.visual = visual
        self.vv_from = vv_from
        self.taps = tuple(sorted(set(taps)))
        self.fused = fused
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual.ln_post(tokens) @ self.visual.proj, dim=-1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.visual._embeds((pixels - self.mean) / self.std)  # (B, 1 + N, W)
        vv = None
        taps = []
        for i, block in enumerate(self.visual.transformer.resblocks, start=1):
            if i == self.vv_from:
                vv = x  # the V-V stream starts from the original stream's input to this block
            x, vv = block_forward(block, x, vv, self.fused)
            if i in self.taps:
                taps.append(self.project((x if vv is None else vv)[:, 1:]))
        return (self.project(x[:, 0]), *taps)


class ClipTextGraph(nn.Module):
    """(B, context) int64 token ids -> (B, D) L2-normalised text embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, normalize=True)
