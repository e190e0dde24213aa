"""An inference-only plan of the recommendation step for T5-style encoders: same function, less work.

Why: serving computes one thing per user, the scores of the user vector h_u (Eq. 4-5 of the
paper), and at the windows the shipped model reads (200 items) the step's work is the encoder's
GEMMs and its attention; at short windows it is launching ~80 small kernels.
:class:`LeanRunner` computes exactly what ``LiteRecModel`` with a lean (or HF T5) backbone
computes at inference, re-planned for speed:

- **only what the answer needs.** With ``pooling: last`` h_u is the top layer's output at the
  last real position, so the top layer computes keys and values at every position but the
  query, the attention output, the feed-forward and the final norm at that one position
  (``last_only``); the other layers run at every position, as they feed those keys and values;
- **one mask for a whole causal batch.** Histories are right-padded (as the recommender and the
  evaluation pad them), so in a causal model no real position ever sees a padding key: the
  mask is the causal one, shared by every row, and the attention reads the cached
  ``(1, H, T, T)`` relative-position bias with the future at -inf, broadcast over the batch (no
  per-step ``(B, H, T, T)`` mask). Bidirectional models (and the time bias, which differs per
  user) still build a per-row masked bias;
- **fused attention.** ``attention="sdpa"`` runs ``scaled_dot_product_attention``, whose fused
  kernels (cuDNN / memory-efficient on CUDA, flash on CPU) never materialise the scores;
  ``"triton"`` and ``"flash"`` run one Triton kernel per layer (:mod:`lite_rec.infer.triton_attention`:
  one tile per user and head, fastest for short windows; flash-style tiling that skips the
  future's key blocks), ``"auto"`` the one-tile kernel up to :data:`TILE_MAX_LEN` items, the
  flash-style one up to :data:`FLASH_MAX_LEN` and SDPA above (the fastest of each, timed on an
  H100), ``"bmm"`` plain matrix products;
- the item inputs ``adapter(item_vectors) (+ item_embedding)`` do not depend on the user, so
  they become one precomputed table and the input is one gather; the per-item contexts
  (``model.time_gaps`` / ``ratings`` / ``query_time``: embeddings added to the input;
  ``time_bias``: a per-user attention bias) are read as the model reads them; with the flash
  kernel each user's whole (B, H, T, T) bias (position and time) is built once per step by one
  Triton kernel in the activations' dtype and read by every layer (the top layer its one row); the
  SDPA and bmm plans build it in fp32 by torch ops;
- RMSNorm runs as one fused kernel in the activations' dtype, the residual additions ride on
  the output projections (``addmm_`` into the residual stream, no copy), and optionally the ReLU
  on the FFN's GEMM (``fused_relu``).

The pooling (Eq. 4) and the head (Eq. 5) stay in fp32, as in the model. A Hugging Face T5
encoder is mapped into the lean layout first (``load_t5_weights_into_lean``: an exact mapping).
Inputs must be right-padded (real items first, then zeros). Imports only torch (triton only
where its attention is asked for); traceable by ``torch.export`` for the ONNX export.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lite_rec.data.sequences import CONTEXT_SETTINGS
from lite_rec.model.backbone import LeanEncoder, load_t5_weights_into_lean, relative_position_bucket
from lite_rec.model.context import CONTEXT_ID, CONTEXT_NEXT_GAP, CONTEXT_TIME, time_bucket
from lite_rec.model.rec_llm import LiteRecModel

__all__ = ["ATTENTIONS", "FLASH_MAX_LEN", "TILE_MAX_LEN", "LeanRunner", "check_contexts", "lean_encoder_of", "supports"]

ATTENTIONS = ("sdpa", "bmm", "triton", "flash", "auto")
# "auto" on CUDA, by the window a batch is cut to (kernels timed alone on an H100, docs/benchmarks.md): the one-tile
# Triton kernel up to 32 items, the flash-style one up to 128, SDPA's fused kernel (cuDNN) above
TILE_MAX_LEN, FLASH_MAX_LEN = 32, 128


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


def check_contexts(items: torch.Tensor, contexts: torch.Tensor | None) -> None:
    """The model's error (``LiteRecModel.embed_items``) unless ``contexts`` is (B, T, C) for ``items`` (B, T)."""
    if contexts is None or contexts.dim() != 3 or contexts.shape[:2] != items.shape:
        got = "none" if contexts is None else f"shape {tuple(contexts.shape)}"
        raise ValueError(f"this model reads an input context ({CONTEXT_SETTINGS}): "
                         f"pass contexts (B, T, C) with the items {tuple(items.shape)}; got {got}")


def _load_triton_attention(device: torch.device, head_dim: int) -> tuple[Callable[..., torch.Tensor], ...]:
    """``lite_rec.infer.triton_attention``'s kernels (one-tile, flash-style, per-user bias, input sum), imported only here:
    triton is needed only for these options. Raises a readable error without triton, off CUDA, or for a head
    size it cannot tile."""
    from lite_rec.infer import triton_attention  # ImportError naming the triton pin where triton is missing

    triton_attention.check_supported(torch.device(device), head_dim)
    return (triton_attention.attention, triton_attention.flash_attention, triton_attention.user_bias,
            triton_attention.embedding_sum)


class LeanRunner(nn.Module):
    """``forward(items (B, T), contexts (B, T, C) | None) -> logits (B, N+1)`` fp32, the model's inference function.

    ``previous=True`` gives the plan as it was before long windows (every layer at every position,
    a per-row mask, residuals out of place): the benchmarks' previous best.
    """

    def __init__(self, model: LiteRecModel, dtype: torch.dtype = torch.float32, fused_relu: bool = False,
                 attention: str = "sdpa", last_only: bool = True, previous: bool = False) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(map(repr, ATTENTIONS))}, got {attention!r}")
        spec, cfg = model.spec, model.spec.config
        if cfg.time_bias and attention == "triton":
            attention = "flash"  # the one-tile kernel reads one bias for all users; the time bias is per user
        self.fused_relu = fused_relu  # ReLU as a cuBLASLt GEMM epilogue (torch._addmm_activation); CUDA only
        self.attention = attention
        encoder = lean_encoder_of(model)
        device = next(model.parameters()).device
        self.uses_triton = attention in ("triton", "flash", "auto")
        if self.uses_triton:
            self._triton_attention, self._flash_attention, self._user_bias, self._embedding_sum = _load_triton_attention(
                device, spec.backbone.d_model // encoder.n_heads)
        self.dtype, self.causal = dtype, spec.causal
        self.n_heads, self.d_model = encoder.n_heads, spec.backbone.d_model
        self.num_buckets, self.max_distance = encoder.num_buckets, encoder.max_distance
        self.qk_scale = float(getattr(encoder.blocks[0], "qk_scale", 1.0))  # 1.0 for T5 weights
        self.pooling = cfg.pooling
        self.previous = previous
        self.last_only = bool(last_only and cfg.pooling == "last" and not previous)
        self.uses_context = cfg.uses_context
        self.context_ids, self.query_time, self.time_bias = cfg.uses_context_ids, cfg.query_time, cfg.time_bias
        with torch.no_grad():
            table = model.item_representation(torch.arange(spec.n_items + 1, device=device)).float()  # (N+1, D)
        # with input contexts the sum is taken in fp32 (as the model does) and cast once: the item table and
        # the context embeddings stacked into one table, each input row the sum of its 2-3 rows (the Triton
        # plans: one kernel, ``embedding_sum``; else ``F.embedding_bag``), not a gather and an fp32 addition per table
        self.input_offsets: list[int] = []  # where each context's rows start in the stacked table
        self.input_columns: list[int] = []  # ... and which column of the contexts indexes them
        parts = [table]
        for name, column, on in (("context_embedding", CONTEXT_ID, self.context_ids),
                                 ("query_gap_embedding", CONTEXT_NEXT_GAP, self.query_time)):
            if on:
                self.input_offsets.append(sum(len(part) for part in parts))
                self.input_columns.append(column)
                parts.append(getattr(model, name).weight.detach().float())
        # row 0 (padding) as the model computes it
        self.register_buffer("table", torch.cat(parts) if len(parts) > 1 else table.to(dtype))  # (N+1 [+ context rows], D)
        self.register_buffer("time_bias_table", model.time_bias.weight.detach().float().clone() if self.time_bias else None)
        # the bias kernel reads one head's buckets from one row: (H, TIME_BUCKETS), 128 bytes a head
        self.register_buffer("time_bias_heads", self.time_bias_table.t().contiguous() if self.time_bias else None)
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
        self.head_weight = nn.Parameter(model.head_weight().detach().float(), requires_grad=False)  # (N+1, D) fp32 W_proj
        self._position: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- position bias and masks -------------------------------------------------------------

    def position_bias(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per length: the (1, H, T, T) fp32 relative-position bias; the same in the activation dtype
        with the future at -inf when causal (the whole mask of a right-padded causal batch); and
        (T, H, T) in the activation dtype, row l = what the query at position l may see when l is
        the last real position (keys after it at -inf): the top layer's mask is one gather.
        Cached per length, except while ``torch.export`` traces (the length is symbolic there)."""
        exporting = torch.compiler.is_exporting()
        if not exporting and t in self._position:
            return self._position[t]
        pos = torch.arange(t, device=self.rel_bias.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)  # (T, T)
        bias = self.rel_bias[buckets].permute(2, 0, 1)[None].contiguous()  # (1, H, T, T) fp32
        future = pos[None, :] > pos[:, None]  # (T, T)
        causal = bias.masked_fill(future, float("-inf"))  # (1, H, T, T)
        shared = (causal if self.causal else bias).to(self.dtype).contiguous()
        last_rows = causal[0].transpose(0, 1).to(self.dtype).contiguous()  # (T, H, T)
        if not exporting:
            self._position[t] = (bias, shared, last_rows)
        return bias, shared, last_rows

    def _masked_bias(self, bias: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """(1 or B, H, T, T) fp32 bias, (B, T) padding -> (B, H, T, T) in the activation dtype with the
        keys a query may not see at -inf (``attention_allowed``: padding keys and, when causal, the
        future; a query always sees itself, so no row is all -inf)."""
        t = pad.shape[1]
        pos = torch.arange(t, device=pad.device)
        blocked = pad[:, None, None, :]  # (B, 1, 1, T)
        if self.causal:
            blocked = blocked | (pos[None, :] > pos[:, None])  # (B, 1, T, T)
        blocked = blocked & (pos[None, :] != pos[:, None])
        return bias.masked_fill(blocked, float("-inf")).to(self.dtype)

    def _time_bias(self, contexts: torch.Tensor) -> torch.Tensor:
        """(B, T, C) contexts -> (B, H, T, T) fp32 ``model.time_bias`` (``LiteRecModel.attention_time_bias``)."""
        times = contexts[..., CONTEXT_TIME]  # (B, T) Unix seconds
        buckets = time_bucket((times[:, :, None] - times[:, None, :]).abs())  # (B, T, T)
        return F.embedding(buckets, self.time_bias_table).permute(0, 3, 1, 2)  # (B, H, T, T)

    # -- the step ----------------------------------------------------------------------------

    def forward(self, items: torch.Tensor, contexts: torch.Tensor | None = None) -> torch.Tensor:
        return self.item_logits(self.user_vectors(items, contexts))  # (B, N+1)

    def _embed(self, items: torch.Tensor, contexts: torch.Tensor | None) -> torch.Tensor:
        """(B, T) -> (B*T, D) backbone inputs in the activation dtype (``LiteRecModel.embed_items``)."""
        b, t = items.shape
        if not self.input_offsets:
            return self.table[items].reshape(b * t, self.d_model)  # (B*T, D), already in the activation dtype
        if self.uses_triton:  # one Triton pass: each row read once, written once
            return self._embedding_sum(items.contiguous(), contexts.contiguous(), self.table, self.input_columns,
                                       self.input_offsets, self.dtype)  # (B*T, D)
        rows = [items] + [contexts[..., column] + offset for column, offset in zip(self.input_columns, self.input_offsets,
                                                                                   strict=True)]
        bags = torch.stack(rows, -1).reshape(b * t, len(rows))  # (B*T, 1 + contexts) rows of the stacked table
        return F.embedding_bag(bags, self.table, mode="sum").to(self.dtype)  # (B*T, D) summed in fp32, cast once

    def _mode(self, t: int) -> str:
        if self.attention != "auto":
            return self.attention
        if self.time_bias:  # a per-user bias: the flash kernel reads it as it is
            return "flash"
        return "triton" if t <= TILE_MAX_LEN else "flash" if t <= FLASH_MAX_LEN else "sdpa"

    def user_vectors(self, items: torch.Tensor, contexts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) right-padded item_idx (+ (B, T, C) contexts) -> (B, D) fp32 user vectors h_u (Eq. 4)."""
        b, t = items.shape
        d, heads = self.d_model, self.n_heads
        if self.uses_context:
            check_contexts(items, contexts)
        pad = items == 0  # (B, T)
        rows = torch.arange(b, device=items.device)
        last = ((~pad).long() * torch.arange(t, device=items.device)).argmax(1)  # (B,) last real position
        h = self._embed(items, contexts)  # (B*T, D)
        mode = self._mode(t)
        bias, shared, last_rows = self.position_bias(t)
        kernel = mode in ("triton", "flash")  # with the time bias always "flash", which reads a bias per user
        per_user = self.time_bias and not kernel
        if self.time_bias and kernel:  # each user's whole bias, position + time summed in fp32 and rounded once
            bias = self._user_bias(contexts[..., CONTEXT_TIME].contiguous(), bias[0], self.time_bias_heads,
                                   self.dtype)  # (B, H, T, T) in the activation dtype, read by every layer
        elif per_user:
            bias = bias + self._time_bias(contexts)  # (B, H, T, T) fp32
        one_mask = self.causal and not per_user and not self.previous  # right padding: no query sees a padding key
        if kernel:
            # the kernels mask it themselves (the future's -inf of a causal model changes nothing there)
            mask = bias if self.time_bias else shared[0]  # (B, H, T, T) or (H, T, T)
            key_pad = None if one_mask and mode == "flash" else pad
        else:
            mask = shared if one_mask else self._masked_bias(bias, pad)  # (1, H, T, T) or (B, H, T, T)
        params = list(self.layers)
        n_layers = len(params) // 6
        for i in range(n_layers):
            attn_norm, qkv, out, ff_norm, wi, wo = params[6 * i : 6 * i + 6]
            x = F.rms_norm(h, (d,), attn_norm, self.eps)
            if self.last_only and i == n_layers - 1:  # the top layer: the last position's query alone
                top_mask = self._last_bias(bias, last_rows, last, rows)  # (B, H, 1, T)
                h = self._last_layer(h, x, (qkv, out), last, rows, b, t, top_mask)
            else:
                if mode == "flash":
                    a = self._flash_attention(F.linear(x, qkv), mask, key_pad, heads, self.qk_scale, self.causal)  # (B*T, D)
                elif mode == "triton":
                    a = self._triton_attention(F.linear(x, qkv), mask, key_pad, heads, self.qk_scale, self.causal)
                else:
                    q, k, v = F.linear(x, qkv).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, dk)
                    a = self._attend(q, k, v, mask, mode).transpose(1, 2).reshape(b * t, d)
                h = self._residual(h, a, out)
            h = self._feed_forward(h, ff_norm, wi, wo)
        if self.last_only:
            return F.rms_norm(h, (d,), self.final_norm, self.eps).float()  # (B, D): already the last position
        hidden = F.rms_norm(h, (d,), self.final_norm, self.eps).view(b, t, d)
        # Eq. 4 in fp32, as LiteRecModel.user_vectors (or its "last" pooling)
        if self.pooling == "last":
            return hidden.float()[rows, last]  # (B, D)
        summed = hidden.float().masked_fill(pad[..., None], 0.0).sum(1)  # (B, D)
        return summed / (t - pad.sum(1, keepdim=True)).clamp(min=1)

    def _residual(self, h: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """h + a @ weight^T, the addition in the GEMM; in place (out of place, the GEMM first copies h
        into its output: one more pass over the activations per projection)."""
        return torch.addmm(h, a, weight.t()) if self.previous else h.addmm_(a, weight.t())

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
        """(B, H, Tq, dk) queries over (B, H, T, dk) keys/values with an additive mask -> (B, H, Tq, dk)."""
        if mode != "bmm":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.qk_scale)
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.qk_scale + mask  # (B, H, Tq, T)
        return torch.matmul(torch.softmax(scores, -1), v)  # softmax accumulates in fp32 inside the kernel

    def _feed_forward(self, h: torch.Tensor, ff_norm: torch.Tensor, wi: torch.Tensor, wo: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(h, (self.d_model,), ff_norm, self.eps)
        if self.fused_relu:
            f = torch._addmm_activation(self.ff_zero_bias, x, wi.t(), use_gelu=False)  # (rows, d_ff)
        else:
            f = F.relu(F.linear(x, wi))  # (rows, d_ff)
        return self._residual(h, f, wo)

    def _last_bias(self, bias: torch.Tensor, last_rows: torch.Tensor, last: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, H, 1, T) mask of each user's last real position over every key. With right padding the
        keys it may see are exactly those up to itself, causal or not (bidirectional: every later key
        is padding): the cached rows of ``position_bias``, with the time bias that position's row of
        the per-user (B, H, T, T) ``bias`` (position and time bias together)."""
        if not self.time_bias:
            return last_rows[last][:, :, None, :]  # (B, H, 1, T)
        t = last_rows.shape[0]
        row = bias[rows, :, last]  # (B, H, T)
        later = torch.arange(t, device=last.device)[None, :] > last[:, None]  # (B, T)
        return row.masked_fill(later[:, None, :], float("-inf")).to(self.dtype)[:, :, None, :]  # (B, H, 1, T)

    def _last_layer(self, h: torch.Tensor, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor], last: torch.Tensor,
                    rows: torch.Tensor, b: int, t: int, mask: torch.Tensor) -> torch.Tensor:
        """The top layer's attention for the last real position of each row: keys and values at every
        position, the query there alone. (B*T, D) residual stream and its norm -> (B, D); ``mask``:
        that position's (B, H, 1, T) additive mask (``_last_bias``)."""
        qkv, out = weights
        d, heads = self.d_model, self.n_heads
        dk = d // heads
        at = rows * t + last  # (B,) flat row of each user's last position
        q = F.linear(x[at], qkv[:d]).view(b, heads, 1, dk)  # (B, H, 1, dk)
        k, v = F.linear(x, qkv[d:]).view(b, t, 2, heads, dk).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, dk)
        a = self._attend(q, k, v, mask, "bmm" if self.attention == "bmm" else "sdpa").reshape(b, d)  # (B, D)
        return self._residual(h[at], a, out)  # (B, D)

    def item_logits(self, user: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, N+1) fp32 scores of every item (Eq. 5); padding is never recommended."""
        logits = F.linear(user, self.head_weight)  # (B, N+1)
        logits[:, 0] = float("-inf")
        return logits
