"""The recommendation LLM and the item projection head (Lite-LLM4Rec, Eq. 4-6 of the paper).

A user's history of item indices ``(B, T)`` (0 = padding) becomes item inputs (cached text
vectors through a linear adapter, a learned id embedding, or their sum), the backbone
contextualises them, pooling over the real items gives the user vector h_u (Eq. 4: the mean; or
the last real position's output), and a linear head scores every item at once:
``logits = W_proj h_u`` (Eq. 5), trained with cross-entropy over all items (Eq. 6). No decoding,
no beam search: top-k of one matrix product.

Beyond the paper (each off by default, settings in ``ModelConfig``): ``time_gaps`` / ``ratings``
add an embedding of each input item's context (its gap to the previous item, its rating:
``context.py``), ``time_bias`` adds a learned per-head attention bias by how long before the
query item each key item came (lean backbone only), ``query_time`` an embedding of each input
item's gap to the next item (the last one's to the time of the prediction), and
``history_logit`` adds one learned score to every item the user already has
(``scoring.add_history_logit``).

Causal models (the ``onepass`` strategy) use causal attention, so the pooled output up to
position t is exactly the user vector of the prefix ending at t: one forward pass yields every
prefix's user vector (``prefix_user_vectors``) and a loss at every position. At inference a
causal model's user vector is that of the last prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lite_rec.core.errors import DataError
from lite_rec.data.sequences import CONTEXT_SETTINGS
from lite_rec.model.backbone import build_backbone, build_from_spec
from lite_rec.model.context import (
    CONTEXT_ID,
    CONTEXT_NEXT_GAP,
    CONTEXT_TIME,
    N_GAPS,
    PAD_CONTEXT,
    TIME_BUCKETS,
    UNKNOWN_NEXT_GAP,
    n_contexts,
    time_bucket,
)
from lite_rec.model.scoring import IGNORE_INDEX, add_history_logit
from lite_rec.model.spec import ModelConfig, ModelSpec

__all__ = ["HISTORY_LOGIT_SCALE", "ITEM_ROWS", "LiteRecModel", "bucket_bias", "build_model", "model_from_spec"]

# logits per unit of the history-logit parameter; see LiteRecModel.history_logit
HISTORY_LOGIT_SCALE = 16.0
# state-dict tensors with one row per item_idx (N+1 rows) that an item added after training can get a row of without
# training: its cached text vector, and zeros for the learned id parts (the input's and the inductive head's). The
# linear head's "head.weight" is not among them: its rows exist only for the items it was trained on.
ITEM_ROWS = ("item_vectors", "item_embedding.weight", "head_id.weight")


class LiteRecModel(nn.Module):
    """Item inputs -> backbone -> pooling (Eq. 4) -> dropout -> projection head (Eq. 5)."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module, item_vectors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.spec = spec
        cfg = spec.config
        d = spec.backbone.d_model
        self.backbone = backbone
        if "text" in cfg.item_repr:
            if item_vectors is None:
                item_vectors = torch.zeros(spec.n_items + 1, spec.item_dim)  # filled by load_state_dict
            self.register_buffer("item_vectors", item_vectors.detach().float().clone())  # (N+1, D_item), frozen
            self.adapter: nn.Module = nn.Linear(spec.item_dim, d) if spec.item_dim != d else nn.Identity()
        if "id" in cfg.item_repr:
            self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
            nn.init.normal_(self.item_embedding.weight, std=0.02)
            with torch.no_grad():
                self.item_embedding.weight[0].zero_()
        if cfg.time_bias:
            if not hasattr(backbone, "rel_bias"):
                raise ValueError("model.time_bias needs model.backbone=lean (the bias is added inside its attention)")
            # one bias per (time bucket, head), added to every layer's attention like T5's position bias;
            # zeros: training starts from the model without it
            self.time_bias = nn.Embedding(TIME_BUCKETS, spec.backbone.n_heads)
            nn.init.zeros_(self.time_bias.weight)
        if cfg.history_logit:
            # zero: training starts from the model without it
            self.history_logit_param = nn.Parameter(torch.zeros(()))
        if cfg.query_time:
            # zeros: training starts from the model without it; row 0 (padding, no next time known) stays zero
            self.query_gap_embedding = nn.Embedding(N_GAPS, d, padding_idx=UNKNOWN_NEXT_GAP)
            nn.init.zeros_(self.query_gap_embedding.weight)
        if cfg.uses_context_ids:
            self.context_embedding = nn.Embedding(n_contexts(cfg.time_gaps, cfg.ratings), d, padding_idx=PAD_CONTEXT)
            nn.init.normal_(self.context_embedding.weight, std=0.02)
            with torch.no_grad():
                self.context_embedding.weight[PAD_CONTEXT].zero_()
        self.dropout = nn.Dropout(cfg.dropout)  # on the item inputs and on the user vector
        if cfg.head == "linear":
            self.head = nn.Linear(d, spec.n_items + 1, bias=False)  # W_proj of Eq. 5
        else:  # inductive: W_text v_i + e_i (head_weight)
            self.head_text = nn.Linear(spec.item_dim, d, bias=False)  # the text part: projects a cached text vector
            self.head_id = nn.Embedding(spec.n_items + 1, d)  # the id part; zeros: an item starts as its text alone
            nn.init.zeros_(self.head_id.weight)
        self._head_cache: tuple[tuple, torch.Tensor] | None = None  # inference: (inputs' identity, head_weight())

    def train(self, mode: bool = True) -> "LiteRecModel":
        # drop head_weight's inference cache: its key (version counters) misses writes that do not bump them, a
        # fused AdamW step (the trainer's optimizer on CUDA) or an EMA swap through .data; every evaluation switches
        # to eval mode first, so each one computes the rows of the weights it scores
        self._head_cache = None
        return super().train(mode)

    @property
    def item_vectors_trainable(self) -> bool:
        return isinstance(getattr(self, "item_vectors", None), nn.Parameter)

    def unfreeze_item_vectors(self) -> None:
        """Stage 2 of the paper's training: the cached item vectors become trainable, initialised
        from the cache.

        The state-dict key stays ``item_vectors``, so checkpoints load either way.
        """
        if "text" not in self.spec.config.item_repr or self.item_vectors_trainable:
            return
        vectors = self._buffers.pop("item_vectors")
        self.item_vectors = nn.Parameter(vectors.detach().clone())

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        """item_idx of any shape (...) -> (..., D): adapted text vector, id embedding, or their sum."""
        x = 0
        if "text" in self.spec.config.item_repr:
            x = self.adapter(self.item_vectors[items])  # (..., D)
        if "id" in self.spec.config.item_repr:
            x = x + self.item_embedding(items)  # (..., D)
        return x

    def embed_items(self, items: torch.Tensor, contexts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) item_idx -> (B, T, D) backbone inputs (``inputs_embeds``).

        ``contexts`` (B, T, C) context rows of the items (``context.py``), required by a model
        that reads an input context (``ModelConfig.uses_context``); with ``time_gaps`` or
        ``ratings`` the embedding of their id is added to each item's vector, with
        ``query_time`` the embedding of its gap to the next item (``context.next_gap_index``).

        ``query_time`` makes position t read the *time* of item t + 1 (for the last input, the
        time of the prediction): a causal model's prefix ending at t still never reads a later
        item's identity, but it does read when the item it predicts came (HSTU's convention).
        """
        cfg = self.spec.config
        x = self.item_representation(items)  # (B, T, D)
        if cfg.uses_context_ids:
            x = x + self.context_embedding(self._contexts(items, contexts)[..., CONTEXT_ID])  # (B, T, D)
        if cfg.query_time:
            x = x + self.query_gap_embedding(self._contexts(items, contexts)[..., CONTEXT_NEXT_GAP])  # (B, T, D)
        return self.dropout(x)

    def _contexts(self, items: torch.Tensor, contexts: torch.Tensor | None) -> torch.Tensor:
        """``contexts`` checked against ``items`` (B, T): (B, T, C)."""
        if contexts is None or contexts.dim() != 3 or contexts.shape[:2] != items.shape:
            got = "none" if contexts is None else f"shape {tuple(contexts.shape)}"
            raise ValueError(f"this model reads an input context ({CONTEXT_SETTINGS}): "
                             f"pass contexts (B, T, C) with the items {tuple(items.shape)}; got {got}")
        return contexts

    def attention_time_bias(self, items: torch.Tensor, contexts: torch.Tensor | None) -> torch.Tensor:
        """(B, H, T, T) additive attention bias of ``model.time_bias``: entry [b, h, q, k] is the
        learned bias of head h for the bucket of |time(q) - time(k)| (``context.time_bucket``).
        Padding pairs get some bucket too; the backbone masks them anyway."""
        times = self._contexts(items, contexts)[..., CONTEXT_TIME]  # (B, T) Unix seconds
        buckets = time_bucket((times[:, :, None] - times[:, None, :]).abs())  # (B, T, T)
        return bucket_bias(buckets, self.time_bias.weight, onehot=buckets.is_cuda).permute(0, 3, 1, 2)  # (B, H, T, T)

    def history_logit(self) -> torch.Tensor:
        """The learned score () added to every item the user already has (``model.history_logit``).

        Why a scale: AdamW moves a parameter by at most about lr per step whatever the size of
        its gradient, so a bare one could travel at most ~10 logits over all ~4,800 steps of an
        ML-1m run at lr 2e-3, and less as its gradient fades (the seen items' probability it
        pushes down). Where users never repeat an item, the useful value is below every unseen
        item a top-10 could hold: ML-1m runs learn about -9 (docs/results.md). With one unit of
        the parameter worth 16 logits, the step size is no longer what limits it.
        """
        return HISTORY_LOGIT_SCALE * self.history_logit_param

    def contextualize(self, items: torch.Tensor, contexts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        real = items > 0  # (B, T)
        x = self.embed_items(items, contexts)  # (B, T, D)
        if self.spec.config.time_bias:
            hidden = self.backbone(x, real, self.spec.causal, extra_bias=self.attention_time_bias(items, contexts))
        else:
            hidden = self.backbone(x, real, self.spec.causal)  # (B, T, D)
        return hidden, real

    def user_vectors(self, items: torch.Tensor, contexts: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 4: h_u = mean of the outputs over the real (non-padding) positions. (B, T) -> (B, D).

        With ``pooling="last"`` h_u is the output at the last real position instead: over long
        histories (max_seq_len 200) a mean dilutes the most recent items, which carry most of
        the next-item signal on MovieLens; the paper's 20-item window hides that effect.
        """
        hidden, real = self.contextualize(items, contexts)
        if self.spec.config.pooling == "last":
            positions = torch.arange(items.shape[1], device=items.device)  # (T,)
            last = (real.long() * positions).argmax(1)  # (B,) index of the last real item, any padding side
            return hidden.float()[torch.arange(items.shape[0], device=items.device), last]  # (B, D)
        summed = hidden.float().masked_fill(~real[..., None], 0.0).sum(1)  # (B, D); where(), not *: no NaN leak
        return summed / real.sum(1, keepdim=True).clamp(min=1)

    def prefix_user_vectors(self, items: torch.Tensor, contexts: torch.Tensor | None = None) -> torch.Tensor:
        """Causal models: h_u of every prefix from one pass. (B, T) right-padded -> (B, T, D).

        Row t is the pooled causal outputs 0..t, which equals ``user_vectors`` of the prefix
        ``items[:, :t+1]`` because causal outputs at positions <= t never see later items.
        """
        if not self.spec.causal:
            raise ValueError("prefix_user_vectors needs a causal model (train.strategy=onepass)")
        hidden, real = self.contextualize(items, contexts)
        if self.spec.config.pooling == "last":
            return hidden.float().masked_fill(~real[..., None], 0.0)  # (B, T, D): the prefix's own last output
        running = hidden.float().masked_fill(~real[..., None], 0.0).cumsum(1)  # (B, T, D)
        return running / real.long().cumsum(1).clamp(min=1)[..., None]

    def head_weight(self) -> torch.Tensor:
        """(N+1, D) output vector of every item_idx (row 0 is padding): the rows Eq. 5 scores the user
        vector against. Losses and serving read item output vectors only through here, so the head's
        design can change without them.

        ``model.head=linear``: the paper's W_proj, one free row per item. ``inductive``: row i is
        ``W_text v_i + e_i``, the projected cached text vector v_i (``item_vectors``) plus a learned id
        part e_i. An item added after training (``lite-rec add-items``) has e_i = 0, so its row is its
        text's projection alone; that is why training leaves out the id part of a random
        ``head_id_dropout`` share of the items at every step (without rescaling the rest): the text
        part must score an item well on its own. At inference (no grad, eval mode) the rows are
        computed once and reused until a weight changes.
        """
        if self.spec.config.head == "linear":
            return self.head.weight
        inference = not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        key: tuple = ()
        if inference:
            sources = (self.item_vectors, self.head_text.weight, self.head_id.weight)
            key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
            if self._head_cache is not None and self._head_cache[0] == key:
                return self._head_cache[1]
        text = self.head_text(self.item_vectors.to(self.head_text.weight.dtype))  # (N+1, D)
        ids = self.head_id.weight  # (N+1, D)
        p = self.spec.config.head_id_dropout
        if self.training and p > 0:
            keep = torch.rand(ids.shape[0], 1, device=ids.device) >= p  # (N+1, 1): items whose id part counts this step
            ids = ids * keep
        weight = text + ids  # (N+1, D)
        if inference:
            self._head_cache = (key, weight)
        return weight

    def item_logits(self, user: torch.Tensor) -> torch.Tensor:
        """Eq. 5: (..., D) -> (..., N + 1) scores of all items; padding can never be recommended.

        Always in fp32, also under bf16 autocast: bf16 keeps ~3 significant digits, so thousands
        of item scores would tie and ties change ranks (``metrics.py``); the head is a small
        share of the step's compute.
        """
        with torch.autocast(user.device.type, enabled=False):
            logits = F.linear(self.dropout(user.float()), self.head_weight().float())  # (..., N+1)
        logits[..., 0] = float("-inf")
        return logits

    def forward(self, items: torch.Tensor, targets: torch.Tensor | None = None, *,
                seen: torch.Tensor | None = None, contexts: torch.Tensor | None = None,
                history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (and the Eq. 6 loss when targets are given).

        - ``targets`` (B,): one next item per sample -> logits (B, N+1).
        - ``targets`` (B, T) on a causal model: the next item at every position (IGNORE_INDEX where
          none) -> logits (B, T, N+1) and the mean cross-entropy over supervised positions.
        - no targets: scores for inference, (B, N+1).

        ``contexts`` (B, T, C): ``embed_items``. With ``model.history_logit`` the learned history
        score is added to the items the user already has (``add_history_logit``): in training
        each sample's input (each prefix's, for (B, T) targets) and ``seen`` (B, N+1), the items
        the user had before the input window (``BatchMaker.seen_before``); at inference the items
        of ``history`` (B, H), every item of the user (0-padded). Without ``history`` inference
        scores leave it out (serving adds it over the whole history itself:
        ``Recommender.score_indices``).
        """
        if targets is not None and targets.dim() == 2:
            logits = self.item_logits(self.prefix_user_vectors(items, contexts))  # (B, T, N+1)
        else:
            logits = self.item_logits(self.user_vectors(items, contexts))  # (B, N+1)
        if self.spec.config.history_logit and (targets is not None or history is not None):
            logits = add_history_logit(logits, items, self.history_logit(), seen=seen, history=history)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss


def bucket_bias(buckets: torch.Tensor, weight: torch.Tensor, onehot: bool) -> torch.Tensor:
    """``weight[buckets]``: (...) bucket ids, (K, H) table -> (..., H), by lookup or one-hot product.

    Why two forms of one value: the lookup's backward adds every entry's gradient into K rows
    (B*T*T = 5.1M entries into 32 rows for an ML-1m batch); on the compiled GPU path an epoch
    took twice as long with it (docs/benchmarks.md; most likely atomics contended on those few
    addresses). A one-hot product's backward is one matrix product: +8% per epoch over the model
    without the bias there. On a CPU the lookup is the faster one (7x compiled, 3.6x eager, on a
    2-core VM).
    """
    if not onehot:
        return F.embedding(buckets, weight)
    hot = buckets[..., None] == torch.arange(weight.shape[0], device=buckets.device)  # (..., K)
    return hot.to(weight.dtype) @ weight


def build_model(
    model_cfg: ModelConfig, n_items: int, item_vectors: torch.Tensor | None, *, causal: bool
) -> tuple[LiteRecModel, str]:
    """Build the recommendation model from its settings; returns it and how the backbone was initialised.

    `item_vectors` (N+1, D_item) with row 0 = zeros (padding) is required for ``text`` and
    ``text+id`` and ignored for ``id``.
    """
    needs_text = "text" in model_cfg.item_repr
    if needs_text:
        if item_vectors is None:
            raise DataError(f"model.item_repr={model_cfg.item_repr} needs item vectors; none were given")
        if item_vectors.dim() != 2 or item_vectors.shape[0] != n_items + 1:
            raise DataError(
                f"item vectors have shape {tuple(item_vectors.shape)}; expected ({n_items + 1}, D): "
                f"one row per item_idx 0..{n_items}"
            )
        if bool(item_vectors[0].abs().sum() != 0):
            raise DataError("item vectors: row 0 (padding) must be all zeros")
    backbone, bspec, note = build_backbone(
        model_cfg.backbone, model_cfg.d_model, model_cfg.n_layers, model_cfg.n_heads, model_cfg.d_ff,
        model_cfg.backbone_dropout, model_cfg.pretrained,
    )
    item_dim = int(item_vectors.shape[1]) if needs_text and item_vectors is not None else 0
    spec = ModelSpec(n_items=n_items, item_dim=item_dim, causal=causal, backbone=bspec, config=model_cfg)
    return LiteRecModel(spec, backbone, item_vectors if needs_text else None), note


def model_from_spec(spec: ModelSpec) -> LiteRecModel:
    """An untrained model of the saved architecture (weights come from the safetensors file)."""
    return LiteRecModel(spec, build_from_spec(spec.backbone))
