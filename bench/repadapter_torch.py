"""RepAdapter in PyTorch exactly as the official code (luogen1996/RepAdapter) attaches it to timm's
VisionTransformer. The test fixtures (test/fixtures/make_fixtures.py) and the benchmark's PyTorch
side (bench/pytorch_bench.py) both use this one definition, so the fixtures prove the benchmark's
reference equal to the native model."""
import types

import torch.nn as nn


class RepAdapter(nn.Module):
    """y = x + scale * conv_B(dropout(conv_A(x))) over the channel dimension; conv_B is grouped."""

    def __init__(self, in_features, hidden_dim=8, groups=2, scale=1.0, dropout=0.1):
        super().__init__()
        self.conv_A = nn.Conv1d(in_features, hidden_dim, 1, groups=1, bias=True)
        self.conv_B = nn.Conv1d(hidden_dim, in_features, 1, groups=groups, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.groups = groups
        self.scale = scale

    def forward(self, x):  # x [B, N, d]
        x = x.transpose(1, 2)
        x = self.conv_B(self.dropout(self.conv_A(x))) * self.scale + x
        return x.transpose(1, 2).contiguous()


def _attn_kwargs(attn_mask, is_causal):
    # Only what was asked for: timm versions before attn_mask / is_causal existed take neither.
    kw = {}
    if attn_mask is not None:
        kw["attn_mask"] = attn_mask
    if is_causal:
        kw["is_causal"] = True
    return kw


def _forward_attn(self, x, attn_mask=None, is_causal=False):
    x = x + self.drop_path1(self.ls1(self.attn(self.adapter_attn(self.norm1(x)),
                                               **_attn_kwargs(attn_mask, is_causal))))
    x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
    return x


def _forward_block(self, x, attn_mask=None, is_causal=False):
    x = x + self.drop_path1(self.ls1(self.attn(self.adapter_attn(self.norm1(x)),
                                               **_attn_kwargs(attn_mask, is_causal))))
    x = x + self.drop_path2(self.ls2(self.mlp(self.adapter_mlp(self.norm2(x)))))
    return x


def attach_adapters(model, placement, hidden=8, groups=2, scale=1.0, dropout=0.1):
    """Gives every block of a timm VisionTransformer `adapter_attn` (and, for placement 'block',
    `adapter_mlp`) and the official block forward. New adapters are untouched (PyTorch's Conv1d
    init); callers set their weights."""
    width = model.embed_dim
    for blk in model.blocks:
        blk.adapter_attn = RepAdapter(width, hidden, groups, scale, dropout)
        if placement == "block":
            blk.adapter_mlp = RepAdapter(width, hidden, groups, scale, dropout)
            blk.forward = types.MethodType(_forward_block, blk)
        else:
            blk.forward = types.MethodType(_forward_attn, blk)
    return model
