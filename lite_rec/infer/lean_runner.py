"""An inference-only plan of the recommendation step for T5-style encoders: same function, fewer kernels.

Why: at serving sizes (32 users x 21 items on a GPU) the step's arithmetic takes tens of
microseconds and the time goes to launching ~120 small kernels and to elementwise passes
over activations. :class:`LeanRunner` computes exactly what ``LiteRecModel`` with a lean (or HF
T5) backbone computes at inference (Eq. 4-5 of the paper), re-planned for speed:

- the item inputs ``adapter(item_vectors) (+ item_embedding)`` do not depend on the user, so
  they become one precomputed table and the input is a single gather;
- the relative-position bias depends only on the length, so it is computed once per length
  bucket; padding and causality are applied to it with one ``masked_fill`` per step, not per layer;
- RMSNorm runs as one fused kernel on the activations' own dtype (fp32 statistics inside the
  kernel), instead of upcast + norm + downcast;
- the residual additions ride on the output projections (``addmm`` with beta = 1);
- optionally (``attention="triton"``, CUDA) the whole attention of a layer, mask included, is one
  Triton kernel (:mod:`lite_rec.infer.triton_attention`) reading the QKV GEMM's output in place.

The pooling (Eq. 4) and the head (Eq. 5) stay in fp32, as in the model. A Hugging Face T5
encoder is mapped into the lean layout first (``load_t5_weights_into_lean``: an exact mapping),
so models trained with ``backbone: t5-small`` get the same plan. Imports only torch (triton only
when ``attention="triton"`` is asked for).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lite_rec.model.backbone import LeanEncoder, load_t5_weights_into_lean, relative_position_bucket
from lite_rec.model.rec_llm import LiteRecModel

__all__ = ["LeanRunner", "lean_encoder_of", "supports"]


def supports(model: LiteRecModel) -> bool:
    """True when the backbone is the lean encoder or a Hugging Face T5 encoder (mappable)."""
    return model.spec.backbone.kind in ("lean", "t5")


def lean_encoder_of(model: LiteRecModel) -> LeanEncoder:
    """The model's backbone as a :class:`LeanEncoder` (HF T5 weights mapped one to one)."""
    backbone = model.backbone
    inner = getattr(backbone, "inner", backbone)  # fast_path's dtype wrapper
    if isinstance(inner, LeanEncoder):
        return inner
    s = model.spec.backbone
    if s.kind != "t5":
        raise ValueError(f"backbone kind {s.kind!r} has no lean plan (lean and t5 do)")
    cfg = inner.hf.config  # bucket settings come from the T5 config, not from assumptions
    lean = LeanEncoder(s.d_model, s.n_layers, s.n_heads, s.d_ff, 0.0, num_buckets=cfg.relative_attention_num_buckets,
                       max_distance=cfg.relative_attention_max_distance)
    load_t5_weights_into_lean(lean, {k: v.float() for k, v in inner.hf.state_dict().items()})
    return lean


def _load_triton_attention(device: torch.device, head_dim: int) -> Callable[..., torch.Tensor]:
    """``lite_rec.infer.triton_attention.attention``, imported only here: triton is needed only for this
    option. Raises a readable error without triton, off CUDA, or for a head size it cannot tile."""
    from lite_rec.infer import triton_attention  # ImportError naming the triton pin where triton is missing

    triton_attention.check_supported(torch.device(device), head_dim)
    return triton_attention.attention


class LeanRunner(nn.Module):
    """``forward(items (B, T)) -> logits (B, N+1)`` fp32, the model's inference function."""

    def __init__(self, model: LiteRecModel, dtype: torch.dtype = torch.float32, fused_relu: bool = False, attention: str = "sdpa") -> None:
        super().__init__()
        if attention not in ("sdpa", "bmm", "triton"):
            raise ValueError(f"attention must be 'sdpa', 'bmm' or 'triton', got {attention!r}")
        self.fused_relu = fused_relu  # ReLU as a cuBLASLt GEMM epilogue (torch._addmm_activation); CUDA only
        # "bmm": scores by baddbmm (bias fused), softmax, bmm: better for many short rows;
        # "triton": one kernel per layer, mask applied inside (lite_rec.infer.triton_attention)
        self.attention = attention
        spec = model.spec
        encoder = lean_encoder_of(model)
        device = next(model.parameters()).device
        if attention == "triton":
            self._triton_attention = _load_triton_attention(device, spec.backbone.d_model // encoder.n_heads)
        self.dtype, self.causal = dtype, spec.causal
        self.n_heads, self.d_model = encoder.n_heads, spec.backbone.d_model
        self.num_buckets, self.max_distance = encoder.num_buckets, encoder.max_distance
        self.qk_scale = float(getattr(encoder.blocks[0], "qk_scale", 1.0))  # 1.0 for T5 weights
        self.pooling = spec.config.pooling
        with torch.no_grad():
            table = model.item_representation(torch.arange(spec.n_items + 1, device=device)).float()  # (N+1, D)
        self.register_buffer("table", table.to(dtype))  # row 0 (padding) as the model computes it
        encoder = encoder.to(device)
        self.register_buffer("rel_bias", encoder.rel_bias.weight.detach().float())  # (buckets, H)
        self.eps = encoder.final_norm.eps

        def w(t: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(t.detach().to(device, dtype), requires_grad=False)

        self.layers = nn.ParameterList()
        for blk in encoder.blocks:
            self.layers.extend([w(blk.attn_norm.weight), w(blk.qkv.weight), w(blk.out.weight), w(blk.ff_norm.weight),
                                w(blk.wi.weight), w(blk.wo.weight)])
        self.final_norm = w(encoder.final_norm.weight)
        self.register_buffer("ff_zero_bias", torch.zeros(spec.backbone.d_ff, device=device, dtype=dtype))  # for the fused epilogue
        self.head_weight = nn.Parameter(model.head.weight.detach().float(), requires_grad=False)  # (N+1, D) fp32 W_proj
        self._position: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def position_bias(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per length, cached: the (1, H, T, T) relative-position bias in the activation dtype, and
        the (T, T) positions no key may ever fill for a query: the future (causal) except itself.

        With these, a step's mask is ``pad_key & fixed`` (as ``attention_allowed``: padding keys
        and the future are blocked, a query always sees itself): two small kernels, not six.
        """
        if t not in self._position:
            pos = torch.arange(t, device=self.table.device)
            buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)  # (T, T)
            bias = self.rel_bias[buckets].permute(2, 0, 1)[None].to(self.dtype).contiguous()  # (1, H, T, T)
            not_self = ~torch.eye(t, dtype=torch.bool, device=pos.device)  # (T, T)
            future = torch.ones(t, t, dtype=torch.bool, device=pos.device).triu(1) if self.causal else torch.zeros_like(not_self)
            self._position[t] = (bias, not_self, future)
        return self._position[t][0], self._position[t][1]

    def _blocked(self, pad: torch.Tensor, t: int) -> torch.Tensor:
        """(B, T) padding -> (B, 1, T, T) bool: keys each query may not attend to."""
        _, not_self = self.position_bias(t)
        key = pad[:, None, None, :]  # (B, 1, 1, T)
        if self.causal:
            key = key | self._position[t][2]  # (B, 1, T, T)
        return key & not_self

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_logits(self.user_vectors(items))  # (B, N+1)

    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """(B, T) item_idx -> (B, D) fp32 user vectors h_u (Eq. 4)."""
        b, t = items.shape
        d, heads = self.d_model, self.n_heads
        pad = items == 0  # (B, T)
        h = self.table[items].view(b * t, d)  # (B*T, D)
        if self.attention == "triton":
            bias = self.position_bias(t)[0][0]  # (H, T, T): the kernel masks it itself
        else:
            bias = self.position_bias(t)[0].masked_fill(self._blocked(pad, t), float("-inf"))  # (B, H, T, T)
        params = list(self.layers)
        for i in range(0, len(params), 6):
            attn_norm, qkv, out, ff_norm, wi, wo = params[i : i + 6]
            x = F.rms_norm(h, (d,), attn_norm, self.eps)
            if self.attention == "triton":
                a = self._triton_attention(F.linear(x, qkv), bias, pad, heads, self.qk_scale, self.causal)  # (B*T, D)
            elif self.attention == "sdpa":
                q, k, v = F.linear(x, qkv).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, dk)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.qk_scale)  # (B, H, T, dk)
                a = a.transpose(1, 2).reshape(b * t, d)
            else:
                q, k, v = F.linear(x, qkv).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).reshape(3, b * heads, t, d // heads)
                scores = torch.baddbmm(bias.reshape(b * heads, t, t), q, k.transpose(1, 2), alpha=self.qk_scale)  # (B*H, T, T)
                a = torch.bmm(torch.softmax(scores, -1), v)  # softmax accumulates in fp32 inside the kernel
                a = a.view(b, heads, t, d // heads).transpose(1, 2).reshape(b * t, d)
            h = torch.addmm(h, a, out.t())  # residual in the GEMM
            x = F.rms_norm(h, (d,), ff_norm, self.eps)
            if self.fused_relu:
                f = torch._addmm_activation(self.ff_zero_bias, x, wi.t(), use_gelu=False)  # (B*T, d_ff)
            else:
                f = F.relu(F.linear(x, wi))  # (B*T, d_ff)
            h = torch.addmm(h, f, wo.t())
        hidden = F.rms_norm(h, (d,), self.final_norm, self.eps).view(b, t, d)
        # Eq. 4 in fp32, as LiteRecModel.user_vectors (or its "last" pooling)
        if self.pooling == "last":
            last = ((~pad).long() * torch.arange(t, device=items.device)).argmax(1)  # (B,) last real position
            return hidden.float()[torch.arange(b, device=items.device), last]  # (B, D)
        summed = hidden.float().masked_fill(pad[..., None], 0.0).sum(1)  # (B, D)
        return summed / (t - pad.sum(1, keepdim=True)).clamp(min=1)

    def item_logits(self, user: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, N+1) fp32 scores of every item (Eq. 5); padding is never recommended."""
        logits = F.linear(user, self.head_weight)  # (B, N+1)
        logits[:, 0] = float("-inf")
        return logits
