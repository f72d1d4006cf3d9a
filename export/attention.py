"""Attention that exports as one fused operator: onnxruntime's MultiHeadAttention.

onnxruntime's transformer optimizer finds attention by matching the subgraph a
known exporter writes (BERT, ViT, CLIP text). It recognises none of ours: the
V-V stream attends with q = k = v, SAM adds decomposed relative-position terms
before the softmax, and nn.MultiheadAttention traces into a different shape
again (measured on ViT-B-16: 21 Softmax left, no Attention node). So the export
writes the fused node itself: `attention` runs plain scaled dot-product
attention in torch (the reference parity is measured against) and traces as
one `com.microsoft::MultiHeadAttention` node, which onnxruntime runs on the CPU
(fp32 and fp16) and on CUDA (flash / memory-efficient kernels). q, k, v go in
as (B, L, heads * d), so no head reshapes or shape arithmetic surround it.

`fused=False` traces the same math as plain ONNX operators (MatMul, Softmax)
for runtimes without onnxruntime's contrib operators (TensorRT's own parser).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.onnx import symbolic_helper

DOMAIN = "com.microsoft"
FUSED_OP = "MultiHeadAttention"


def _heads_first(t: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, _ = t.shape
    return t.reshape(batch, length, heads, -1).transpose(1, 2)  # (B, h, L, d)


def plain_attention(q, k, v, heads: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v per head; q, k, v (B, L, h*d), bias (B, h, Lq, Lk) -> (B, Lq, h*d)."""
    batch, length, _ = q.shape
    qh, kh, vh = (_heads_first(t, heads) for t in (q, k, v))
    weights = qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5
    if bias is not None:
        weights = weights + bias
    out = torch.softmax(weights, dim=-1) @ vh  # (B, h, Lq, d)
    return out.transpose(1, 2).reshape(batch, length, -1)


class _Fused(torch.autograd.Function):
    """Eager: torch's scaled_dot_product_attention. Traced: one MultiHeadAttention node."""

    @staticmethod
    def forward(ctx, q, k, v, heads: int, bias=None):
        batch, length, _ = q.shape
        qh, kh, vh = (_heads_first(t, heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)
        return out.transpose(1, 2).reshape(batch, length, -1)

    @staticmethod
    def symbolic(g, q, k, v, heads: int, bias=None):
        op = f"{DOMAIN}::{FUSED_OP}"
        if bias is None or symbolic_helper._is_none(bias):
            out = g.op(op, q, k, v, num_heads_i=heads)
        else:  # inputs 3 (packed q/k/v bias) and 4 (key padding mask) left empty; 5 = attention_bias
            empty = symbolic_helper._optional_input_placeholder_tensor(g)
            out = g.op(op, q, k, v, empty, empty, bias, num_heads_i=heads)
        out.setType(q.type())  # (B, Lq, h*d) as q: v has q's width in every graph here
        return out


def attention(q, k, v, heads: int, bias: torch.Tensor | None = None, fused: bool = True) -> torch.Tensor:
    """Multi-head attention over (B, L, h*d) inputs with an optional additive bias (B, h, Lq, Lk).

    fused: export as one onnxruntime MultiHeadAttention node (eager: torch's SDPA);
    otherwise as the plain operators.
    """
    if fused:
        return _Fused.apply(q, k, v, heads, bias)
    return plain_attention(q, k, v, heads, bias)
