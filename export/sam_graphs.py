"""SAM's ViT image encoder, written for export: fused attention, LayerNorm ops.

The same computation as segment-anything's `ImageEncoderViT.forward` (parity
is measured against that eager module at every export), with two changes in
how it traces:

* attention is `attention.attention` on (B, L, heads * d) q, k, v, so it
  becomes one MultiHeadAttention node; the decomposed relative-position terms
  SAM adds before the softmax go in as its attention bias (B, heads, L, L);
* the neck's LayerNorm2d (mean, pow, sqrt over channels) is written as one
  LayerNormalization over the channel axis, which the fp16 variant keeps in
  fp32 and onnxruntime computes with fp32 statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos, window_partition, window_unpartition
from torch import nn

from .attention import attention


def rel_pos_bias(attn: Attention, q: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """SAM's decomposed relative-position terms as an additive bias (B, heads, H*W, H*W).

    bias[q, (kh, kw)] = <q, Rh[qh, kh]> + <q, Rw[qw, kw]>, from the unscaled q (B, H*W, heads * d).
    """
    h, w = hw
    batch, heads = q.shape[0], attn.num_heads
    rel_h = get_rel_pos(h, h, attn.rel_pos_h)  # (H, H, d)
    rel_w = get_rel_pos(w, w, attn.rel_pos_w)  # (W, W, d)
    r_q = q.reshape(batch, h, w, heads, -1)
    along_h = torch.einsum("bhwnc,hkc->bnhwk", r_q, rel_h)  # (B, heads, H, W, H)
    along_w = torch.einsum("bhwnc,wkc->bnhwk", r_q, rel_w)  # (B, heads, H, W, W)
    return (along_h[..., :, None] + along_w[..., None, :]).reshape(batch, heads, h * w, h * w)


def attention_forward(attn: Attention, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """segment-anything's Attention on x (B, H, W, C) -> (B, H, W, C)."""
    batch, h, w, width = x.shape
    q, k, v = attn.qkv(x).reshape(batch, h * w, 3 * width).chunk(3, dim=-1)  # (B, L, C) each
    bias = rel_pos_bias(attn, q, (h, w)) if attn.use_rel_pos else None
    out = attention(q, k, v, attn.num_heads, bias, fused=fused)  # (B, L, C)
    return attn.proj(out.reshape(batch, h, w, width))


def block_forward(block: Block, x: torch.Tensor, hw: tuple[int, int], fused: bool) -> torch.Tensor:
    """segment-anything's Block (window or global attention, then MLP) on the stream x (B, H*W, C).

    The stream stays 3-D between blocks (4-D only around attention), so that each
    residual Add + LayerNorm pair fuses into one SkipLayerNormalization.
    """
    batch, _, width = x.shape
    y = block.norm1(x).reshape(batch, *hw, width)
    if block.window_size > 0:
        y, padded = window_partition(y, block.window_size)  # (B * windows, ws, ws, C)
    y = attention_forward(block.attn, y, fused)
    if block.window_size > 0:
        y = window_unpartition(y, block.window_size, padded, hw)
    x = x + y.reshape(x.shape)
    return x + block.mlp(block.norm2(x))


def channel_norm(norm: LayerNorm2d, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm2d on x (B, C, H, W) as one layer norm over the channel axis."""
    channels = (int(norm.weight.shape[0]),)  # a constant, not a traced size
    y = F.layer_norm(x.permute(0, 2, 3, 1), channels, norm.weight, norm.bias, norm.eps)
    return y.permute(0, 3, 1, 2)


def neck_forward(neck: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for layer in neck:
        x = channel_norm(layer, x) if isinstance(layer, LayerNorm2d) else layer(x)
    return x


def encoder_forward(encoder: nn.Module, x: torch.Tensor, fused: bool = True) -> torch.Tensor:
    """`ImageEncoderViT.forward`: normalised (B, 3, 1024, 1024) -> (B, 256, 64, 64)."""
    x = encoder.patch_embed(x)  # (B, H, W, C)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    batch, h, w, width = x.shape
    x = x.reshape(batch, h * w, width)
    for block in encoder.blocks:
        x = block_forward(block, x, (h, w), fused)
    return neck_forward(encoder.neck, x.reshape(batch, h, w, width).permute(0, 3, 1, 2))
