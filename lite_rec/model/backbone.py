"""Backbones of the recommendation LLM: item vectors in, one contextual vector per position out.

Why a module of its own: the recommendation LLM (part 2 of the paper) is "a pretrained encoder that
takes item vectors as ``inputs_embeds``". Three encoders share one interface here,
``forward(x (B, T, D), real (B, T) bool, causal) -> (B, T, D)``:

- ``HFEncoder`` wraps a Hugging Face encoder: the T5-small encoder architecture (``t5-small``,
  built from :class:`T5Config` with the sizes of ``ModelConfig``, pretrained weights when they are
  reachable) or any other HF encoder by name or path (``AutoModel``).
- ``LeanEncoder`` is the same T5 encoder written directly on
  ``torch.nn.functional.scaled_dot_product_attention``: pre-norm blocks with RMSNorm (no bias, no
  mean subtraction), unscaled dot-product attention plus T5's bucketed relative position bias
  (shared by all layers), a ReLU feed-forward. Because it is exactly T5's computation,
  :func:`load_t5_weights_into_lean` maps a T5 encoder's weights into it one to one; the unit tests
  check that both give the same outputs. It exists for speed (fewer kernels, fused QKV, one mask
  tensor; the GPU training and CUDA-graph serving path).

Causal mode (the ``onepass`` strategy) lets position t attend to positions <= t only. Padding
keys are always masked; every query may attend to itself, so a padding row is never fully masked
(a fully masked softmax row is NaN, and NaN * 0 in the pooling would still be NaN).
"""

from __future__ import annotations

import inspect
import math
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

T5_HUB_NAME = "google-t5/t5-small"  # the paper's recommendation LLM (6 layers, 512, 8 heads, 2048)
T5_SMALL_SIZES = {"d_model": 512, "n_layers": 6, "n_heads": 8, "d_ff": 2048}


@dataclass(frozen=True)
class BackboneSpec:
    """What is needed to rebuild a backbone without downloading anything (saved with a model)."""

    kind: str  # "lean" | "t5" | "hf"
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    dropout: float  # inside the backbone
    hf_config: dict[str, Any] | None = None  # for "hf": the model's config.to_dict()
    qk_scale: float = 1.0  # lean: attention-logit scale; 1.0 = T5 (weights absorb it), 1/sqrt(dk) for random starts


def relative_position_bucket(relative: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's bidirectional bucketing of ``key_pos - query_pos``: exact for small, log-spaced for far.

    Relative (not absolute) positions are why padding on either side changes nothing: only the
    distance between two real items enters the attention scores.
    """
    half = num_buckets // 2
    buckets = (relative > 0).long() * half
    dist = relative.abs()
    max_exact = half // 2
    is_small = dist < max_exact
    far = max_exact + (
        torch.log(dist.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    far = far.clamp(max=half - 1)
    return buckets + torch.where(is_small, dist, far)


def attention_allowed(real: torch.Tensor, causal: bool) -> torch.Tensor:
    """(B, T) real-item mask -> (B, 1, T, T) bool: may query q attend to key k?"""
    t = real.shape[1]
    allowed = real[:, None, None, :]  # (B, 1, 1, T): never attend to padding
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=real.device).tril()  # (B, 1, T, T)
    eye = torch.eye(t, dtype=torch.bool, device=real.device)
    return allowed | eye  # (B, 1, T, T): self always allowed -> no all-masked softmax row


class RMSNorm(nn.Module):
    """T5LayerNorm: scale only, statistics in fp32 (bf16 variance underflows)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight, self.eps).to(x.dtype)  # one fused kernel on CUDA


class LeanBlock(nn.Module):
    """One T5 encoder block: x + Attn(norm(x)), then x + FFN(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, qk_scale: float = 1.0) -> None:
        super().__init__()
        self.n_heads, self.qk_scale = n_heads, qk_scale
        self.attn_norm = RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.ff_norm = RMSNorm(d_model)
        self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, T, dk); bias: (B, H, T, T) additive (relative positions + -inf mask)
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.attn_dropout if self.training else 0.0,
            scale=self.qk_scale,
        )  # (B, H, T, dk); T5 does not scale q.k by 1/sqrt(dk) (its init absorbs it); a fused kernel needs
        # bias.stride(-1) == 1. A random start with scale 1 trains unstably at lr 1e-3 (logits grow
        # sqrt(dk) times faster), so random lean encoders use 1/sqrt(dk), T5 weights use 1.
        x = x + self.dropout(self.out(a.transpose(1, 2).reshape(b, t, d)))
        h = self.dropout(F.relu(self.wi(self.ff_norm(x))))  # (B, T, d_ff)
        return x + self.dropout(self.wo(h))


class LeanEncoder(nn.Module):
    """T5-encoder computation on SDPA (see the module docstring for why)."""

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, d_ff: int, dropout: float,
        num_buckets: int = 32, max_distance: int = 128, qk_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.n_heads, self.num_buckets, self.max_distance = n_heads, num_buckets, max_distance
        self._buckets: dict[tuple[int, str], torch.Tensor] = {}  # cache, not state
        self.rel_bias = nn.Embedding(num_buckets, n_heads)
        self.blocks = nn.ModuleList(LeanBlock(d_model, n_heads, d_ff, dropout, qk_scale) for _ in range(n_layers))
        self.final_norm = RMSNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        for name, p in self.named_parameters():  # T5-like init scale for random starts
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 if "rel_bias" not in name else 0.1)

    def position_bias(self, t: int, device: torch.device) -> torch.Tensor:
        key = (t, str(device))
        if key not in self._buckets:  # integer buckets depend on T only: computed once per length
            pos = torch.arange(t, device=device)
            self._buckets[key] = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.rel_bias(self._buckets[key]).permute(2, 0, 1)[None]  # (1, H, T, T)

    def forward(self, x: torch.Tensor, real: torch.Tensor, causal: bool = False,
                extra_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D); real: (B, T) bool; extra_bias: (B, H, T, T) added to every layer's
        attention scores with the position bias (the model's ``time_bias``). -> (B, T, D)"""
        allowed = attention_allowed(real, causal)  # (B, 1, T, T)
        bias = self.position_bias(x.shape[1], x.device).float()  # (1, H, T, T)
        if extra_bias is not None:
            bias = bias + extra_bias.float()  # (B, H, T, T)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        # (B, H, T, T), contiguous: SDPA's fused GPU kernels refuse a mask whose last stride is not 1
        bias = torch.where(allowed, bias, float("-inf")).to(dtype).contiguous()
        h = self.dropout(x)
        for block in self.blocks:
            h = block(h, bias)
        return self.dropout(self.final_norm(h))  # (B, T, D)


class HFEncoder(nn.Module):
    """A Hugging Face encoder fed with ``inputs_embeds``; masks built here, not by the caller."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        params = inspect.signature(hf_model.forward).parameters
        # absolute-position encoders (BERT): positions count real items, so left padding is harmless
        self.takes_position_ids = "position_ids" in params and getattr(hf_model.config, "model_type", "") != "t5"

    def forward(self, x: torch.Tensor, real: torch.Tensor, causal: bool = False) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if causal:
            allowed = attention_allowed(real, causal=True)  # (B, 1, T, T)
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            kwargs["attention_mask"] = torch.where(allowed, zero, torch.finfo(x.dtype).min)  # additive 4D mask
        else:
            kwargs["attention_mask"] = real.long()  # (B, T)
        if self.takes_position_ids:
            kwargs["position_ids"] = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        return self.hf(inputs_embeds=x, **kwargs).last_hidden_state  # (B, T, D)


def load_t5_weights_into_lean(lean: LeanEncoder, t5_state: dict[str, torch.Tensor]) -> None:
    """Copy a T5 encoder's weights (``T5EncoderModel.state_dict()``) into a :class:`LeanEncoder`.

    Exact: q/k/v are concatenated into the fused projection; the relative-bias table of block 0
    (T5 shares it across layers) becomes ``rel_bias``. Gated (T5 v1.1) feed-forwards are refused.
    """
    if any(".DenseReluDense.wi_0." in k for k in t5_state):
        raise ValueError("T5 v1.1 (gated-gelu) weights cannot be mapped into the lean encoder (ReLU FFN only)")
    p = "encoder." if any(k.startswith("encoder.") for k in t5_state) else ""
    mapped: dict[str, torch.Tensor] = {
        "rel_bias.weight": t5_state[f"{p}block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
        "final_norm.weight": t5_state[f"{p}final_layer_norm.weight"],
    }
    for i in range(len(lean.blocks)):
        a, f = f"{p}block.{i}.layer.0.", f"{p}block.{i}.layer.1."
        mapped[f"blocks.{i}.attn_norm.weight"] = t5_state[a + "layer_norm.weight"]
        mapped[f"blocks.{i}.qkv.weight"] = torch.cat([t5_state[a + f"SelfAttention.{n}.weight"] for n in "qkv"])
        mapped[f"blocks.{i}.out.weight"] = t5_state[a + "SelfAttention.o.weight"]
        mapped[f"blocks.{i}.ff_norm.weight"] = t5_state[f + "layer_norm.weight"]
        mapped[f"blocks.{i}.wi.weight"] = t5_state[f + "DenseReluDense.wi.weight"]
        mapped[f"blocks.{i}.wo.weight"] = t5_state[f + "DenseReluDense.wo.weight"]
    lean.load_state_dict(mapped, strict=True)


def t5_config(spec: BackboneSpec) -> Any:
    from transformers import T5Config

    return T5Config(
        vocab_size=1, d_model=spec.d_model, d_kv=spec.d_model // spec.n_heads, d_ff=spec.d_ff,
        num_layers=spec.n_layers, num_heads=spec.n_heads, dropout_rate=spec.dropout,
        feed_forward_proj="relu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=0, decoder_start_token_id=0,
    )


def _drop_token_embeddings(hf_model: nn.Module) -> None:
    """Items come in as ``inputs_embeds``: the word-embedding table is dead weight (16M for T5)."""
    emb = hf_model.get_input_embeddings()
    if emb is not None and emb.weight.shape[0] > 1:
        hf_model.set_input_embeddings(nn.Embedding(1, emb.weight.shape[1]))


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached now (``HF_HUB_OFFLINE`` set, or no TCP connection to
    ``HF_ENDPOINT``'s host within `timeout` seconds), or None when it answers.

    Why: on a machine without internet the hub client retries every file with back-off before it
    gives up (minutes at the start of a training run on an air-gapped GPU worker); one short
    connection attempt says the same at once."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} not reachable ({type(exc).__name__})"
    return None


def _try_pretrained_t5(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor] | None, str]:
    """t5-small's encoder weights from the local cache, else from the hub when it answers; else None
    and why (the model then starts from random weights and records that)."""
    sizes = {"d_model": spec.d_model, "n_layers": spec.n_layers, "n_heads": spec.n_heads, "d_ff": spec.d_ff}
    if sizes != T5_SMALL_SIZES:
        return None, f"random init (sizes {sizes} differ from t5-small's {T5_SMALL_SIZES})"
    from transformers import T5EncoderModel

    try:
        return T5EncoderModel.from_pretrained(T5_HUB_NAME, local_files_only=True).state_dict(), f"pretrained {T5_HUB_NAME}"
    except (OSError, ValueError):  # not in the local cache
        pass
    why = hub_unreachable()
    if why is not None:
        return None, f"random init ({T5_HUB_NAME} not cached and the hub unreachable: {why})"
    try:
        state = T5EncoderModel.from_pretrained(T5_HUB_NAME).state_dict()
    except (OSError, ValueError) as exc:  # the hub refused or the download failed
        return None, f"random init ({T5_HUB_NAME} weights not reachable: {type(exc).__name__})"
    return state, f"pretrained {T5_HUB_NAME}"


def build_backbone(
    backbone: str, d_model: int, n_layers: int, n_heads: int, d_ff: int, dropout: float, pretrained: bool
) -> tuple[nn.Module, BackboneSpec, str]:
    """Build the named backbone; returns (module, spec to rebuild it, how it was initialised).

    ``t5-small`` and ``lean`` use the sizes given (config, not code); a pretrained T5-small
    checkpoint is loaded only when the sizes equal T5-small's and the hub (or its cache) is
    reachable; otherwise the init note says why it is random, for the run's tags.
    """
    if backbone in ("lean", "t5-small"):
        kind = "lean" if backbone == "lean" else "t5"
        spec = BackboneSpec(kind, d_model, n_layers, n_heads, d_ff, dropout)
        state, note = _try_pretrained_t5(spec) if pretrained else (None, "random init (pretrained=false)")
        if kind == "lean" and state is None:
            spec = BackboneSpec(kind, d_model, n_layers, n_heads, d_ff, dropout, qk_scale=(d_model // n_heads) ** -0.5)
        module = build_from_spec(spec)
        if state is not None:
            if kind == "lean":
                load_t5_weights_into_lean(module, state)
            else:
                body = {k: v for k, v in state.items() if "embed_tokens" not in k and k != "shared.weight"}
                missing = [k for k in module.hf.load_state_dict(body, strict=False).missing_keys if "embed" not in k]
                if missing:
                    raise ValueError(f"{T5_HUB_NAME} checkpoint lacks {missing[:3]} for the T5 encoder")
        return module, spec, note
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    from lite_rec.items.encoder import resolve_encoder  # the MiniLM name -> its registry package

    path = resolve_encoder(backbone)
    config = AutoConfig.from_pretrained(path)
    cls = T5EncoderModel if config.model_type in ("t5", "mt5", "umt5") else AutoModel
    hf = cls.from_pretrained(path) if pretrained else cls.from_config(config)
    hf = hf.float()  # fp32 master weights however the checkpoint was stored (fp16 copies travel lighter)
    _drop_token_embeddings(hf)
    width = getattr(hf.config, "hidden_size", None) or hf.config.d_model
    spec = BackboneSpec("hf", int(width), 0, 0, 0, 0.0, hf_config=hf.config.to_dict())
    return HFEncoder(hf), spec, (f"pretrained {backbone}" if pretrained else f"random init ({backbone} architecture)")


def build_from_spec(spec: BackboneSpec) -> nn.Module:
    """Rebuild a backbone architecture (random weights) from a saved :class:`BackboneSpec`."""
    if spec.kind == "lean":
        return LeanEncoder(spec.d_model, spec.n_layers, spec.n_heads, spec.d_ff, spec.dropout, qk_scale=spec.qk_scale)
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    if spec.kind == "t5":
        hf = T5EncoderModel(t5_config(spec))
    else:
        cfg_dict = dict(spec.hf_config or {})
        config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
        hf = (T5EncoderModel if config.model_type in ("t5", "mt5", "umt5") else AutoModel).from_config(config)
    _drop_token_embeddings(hf)
    return HFEncoder(hf)
