"""One adapted Swin block: TSN norms, TAA attention bias, bottleneck adapter with skip.

Swin (pre-norm), DESIGN.md section 5::

    a   = x + Attn(TSN1(x), bias=B_t)
    f   = a + MLP(TSN2(a))
    b   = Up(GELU(Down(TSN_b(f) + s_prev)))      s_prev: the previous layer's b (0 at first)
    out = f + b                                  s_next = b

Swin V2 (res-post-norm) keeps its order: ``a = x + TSN1(Attn(x))``, ``f = a + TSN2(MLP(a))``.
The timm block's own attention module runs unchanged (fused ``scaled_dot_product_attention``
included): the task bias joins the additive per-window mask it already accepts. With the
zero initializations, ``out`` equals the frozen block's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.models.swin_transformer import PatchMerging, window_partition, window_reverse

from vtagml.layers import BottleneckAdapter, TaskAdaptedAttentionBias, TaskScaledNorm


class AdapterLayer(nn.Module):
    """Wraps a timm ``SwinTransformerBlock`` or ``SwinTransformerV2Block``.

    Args:
        block: the pretrained block; its norms move into TSN modules, the rest is reused.
        cond_dim: conditioning size d.
        skip_dim: channels of the previous adapter layer's bottleneck output when it differs
            from this block's (a stage change): it then passes through a trainable patch merging.
        use_taa, use_tsn, use_bottleneck: ablation switches (off = the plain block's part; without
            TSN every norm, the bottleneck's included, is a plain LayerNorm).
        bottleneck_reduction: r, the bottleneck width is C / r.
        taa_block_size: m (default: the window side).
    """

    def __init__(self, block: nn.Module, cond_dim: int, skip_dim: int | None = None, use_taa: bool = True,
                 use_tsn: bool = True, use_bottleneck: bool = True, bottleneck_reduction: int = 4,
                 taa_block_size: int | None = None):
        super().__init__()
        self.block = block
        self.post_norm = type(block).__name__ == "SwinTransformerV2Block"
        self.use_tsn = use_tsn
        dim = block.norm1.normalized_shape[0]
        self.tsn1 = TaskScaledNorm.from_layernorm(block.norm1, cond_dim)
        self.tsn2 = TaskScaledNorm.from_layernorm(block.norm2, cond_dim)
        block.norm1, block.norm2 = nn.Identity(), nn.Identity()  # they live on in tsn1/tsn2
        win_h, win_w = block.window_size
        m = taa_block_size or win_w
        self.taa = TaskAdaptedAttentionBias(cond_dim, win_h * win_w, m) if use_taa else None
        self.bottleneck = BottleneckAdapter(dim, cond_dim, bottleneck_reduction) if use_bottleneck else None
        self.skip_proj = None
        if use_bottleneck and skip_dim is not None and skip_dim != dim:
            self.skip_proj = PatchMerging(skip_dim, dim)
        if not use_tsn:  # every norm stays a plain LayerNorm: no task conditioning
            for tsn in self.task_norms():
                tsn.delta_scale.requires_grad_(False)
                tsn.delta_shift.requires_grad_(False)

    def task_norms(self) -> list[TaskScaledNorm]:
        """TSN1, TSN2 and the bottleneck's TSN_b (when there is a bottleneck)."""
        return [self.tsn1, self.tsn2] + ([self.bottleneck.norm] if self.bottleneck is not None else [])

    def pretrained_parameters(self):
        """The block's own (pretrained) parameters, TSN's copied affine terms included."""
        yield from self.block.parameters()
        for tsn in (self.tsn1, self.tsn2):
            yield tsn.weight
            yield tsn.bias

    def _attention(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """Shifted-window attention of the block with an extra per-sample bias.

        Args:
            x: (R, H, W, C); bias: (R, N, N) or None, N = window area.
        """
        blk = self.block
        r, h, w, c = x.shape
        wh, ww = blk.window_size
        sh, sw = blk.shift_size
        shifted = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2)) if (sh or sw) else x
        pad_h, pad_w = (wh - h % wh) % wh, (ww - w % ww) % ww
        shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = shifted.shape[1:3]
        windows = window_partition(shifted, (wh, ww)).view(-1, wh * ww, c)  # (R*nW, N, C)
        mask = blk.get_attn_mask(shifted)  # (nW, N, N) or None
        if bias is not None:
            num_windows = (hp // wh) * (wp // ww)
            full = bias.to(windows.dtype).unsqueeze(1).expand(r, num_windows, -1, -1)
            if mask is not None:
                full = full + mask.to(full.dtype).unsqueeze(0)
            mask = full.reshape(r * num_windows, wh * ww, wh * ww)  # one mask per window
        out = blk.attn(windows, mask=mask).view(-1, wh, ww, c)
        out = window_reverse(out, (wh, ww), hp, wp)[:, :h, :w, :]
        return torch.roll(out, shifts=(sh, sw), dims=(1, 2)) if (sh or sw) else out

    def forward(self, x: Tensor, cond: Tensor, skip: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (R, H, W, C), cond (R, d), skip: previous layer's b or None -> (out, b)."""
        blk = self.block
        bias = self.taa(cond) if self.taa is not None else None
        norm_cond = cond if self.use_tsn else None  # None: plain LayerNorms
        if self.post_norm:
            a = x + blk.drop_path1(self.tsn1(self._attention(x, bias), norm_cond))
            f = a + blk.drop_path2(self.tsn2(blk.mlp(a), norm_cond))
        else:
            a = x + blk.drop_path1(self._attention(self.tsn1(x, norm_cond), bias))
            f = a + blk.drop_path2(blk.mlp(self.tsn2(a, norm_cond)))
        if self.bottleneck is None:
            return f, None
        if skip is not None and self.skip_proj is not None:
            skip = self.skip_proj(skip)
        b = self.bottleneck(f, norm_cond, skip)
        return f + b, b
