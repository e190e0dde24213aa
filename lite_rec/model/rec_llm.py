"""The recommendation LLM and the item projection head (PAPER.md, parts 2 and 3; Eq. 4-6).

A user's history of item indices ``(B, T)`` (0 = padding) becomes item inputs (cached text
vectors through a linear adapter, a learned id embedding, or their sum), the backbone
contextualises them, mean pooling over the real items gives the user vector h_u (Eq. 4), and a
linear head scores every item at once: ``logits = W_proj h_u`` (Eq. 5), trained with
cross-entropy over all items (Eq. 6). No decoding, no beam search: top-k of one matrix product.
Options beyond the paper: ``head="tied"`` scores with the input item representation instead of a
free W_proj, ``score="cosine"`` uses cos(h_u, w_i) / tau, the loss can leave the input's
items out of the softmax (``mask_history``), ``time_gaps`` / ``ratings`` add an embedding of
each input item's context (its gap to the previous item, its rating: ``item_context.py``), and
``time_bias`` adds a learned per-head attention bias by how long before the query item each
key item came (lean backbone only), ``calendar`` adds an embedding of each input item's month,
``query_time`` an embedding of each input item's gap to the next item (the last one's to the
time of the prediction), and ``history_logit`` adds one learned score to every item
the user already has (``add_history_logit``).

Causal models (the ``onepass`` strategy) use causal attention, so the running mean of the outputs
up to position t is exactly the user vector of the prefix ending at t: one forward pass yields
every prefix's user vector (``prefix_user_vectors``) and a loss at every position. At inference a
causal model's user vector is the same mean over all real items, i.e. the last prefix's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lite_rec.core.errors import DataError
from lite_rec.data.sequences import CONTEXT_SETTINGS
from lite_rec.model.backbone import BackboneSpec, build_backbone, build_from_spec
from lite_rec.model.context import (
    CALENDAR_BUCKETS,
    CONTEXT_ID,
    CONTEXT_NEXT_GAP,
    CONTEXT_TIME,
    N_GAPS,
    PAD_CONTEXT,
    TIME_BUCKETS,
    UNKNOWN_NEXT_GAP,
    calendar_bucket,
    n_contexts,
    time_bucket,
)

if TYPE_CHECKING:  # config needs pydantic; the model itself must load without it
    from lite_rec.core.config import ModelConfig

IGNORE_INDEX = -100  # target value of positions that carry no loss (padding, already supervised)
# logits per unit of the history-logit parameter; see LiteRecModel.history_logit
HISTORY_LOGIT_SCALE = 16.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the architecture; saved as JSON next to the weights."""

    n_items: int  # N: item_idx runs 1..N, the head has N + 1 outputs (0 = padding)
    item_dim: int  # width of the cached item vectors (0 when item_repr == "id")
    item_repr: str  # "text" | "id" | "text+id"
    max_seq_len: int  # input items per user at inference (the last ones)
    dropout: float  # on the item inputs and on the user vector
    causal: bool  # causal attention + running-mean pooling (onepass)
    head_bias: bool
    backbone_name: str  # as configured: "t5-small", "lean" or an HF name/path
    backbone: BackboneSpec
    pooling: str = "mean"  # "mean" (Eq. 4) | "last": the output at the last real position (SASRec-style)
    head: str = "linear"  # "linear": W_proj (Eq. 5) | "tied": the input item representation scores items
    score: str = "dot"  # "dot" | "cosine": cos(h_u, w_i) / temperature
    temperature: float = 1.0  # divides cosine scores (unused with "dot")
    user_dropout: float | None = None  # on the user vector before the head; None = ``dropout`` (the paper's one rate)
    time_gaps: bool = False  # the input context holds each item's gap to the previous one (item_context.py)
    ratings: bool = False  # the input context holds the rating the user gave each item
    time_bias: bool = False  # attention is biased by the time between query and key items (item_context.py)
    history_logit: bool = False  # one learned score added to the items the user already has (add_history_logit)
    calendar: bool = False  # the month of each input item is embedded and added to it (item_context.py)
    query_time: bool = False  # each input item's gap to the next item (the last's: to the query time) is embedded
    query_gap_floor: int = 0  # seconds: next gaps below it read as one (item_context.next_gap_index)

    @property
    def uses_context(self) -> bool:
        """Whether the model reads a context row per input item (``contexts=``)."""
        return self.time_gaps or self.ratings or self.time_bias or self.calendar or self.query_time

    @property
    def uses_context_ids(self) -> bool:
        """Whether the context rows' id column is read (an embedding added to each item)."""
        return self.time_gaps or self.ratings

    @property
    def context_features(self) -> dict[str, bool | int]:
        """The input-context features read, as ``batches.item_contexts`` takes them."""
        return {"time_gaps": self.time_gaps, "ratings": self.ratings, "time_bias": self.time_bias,
                "calendar": self.calendar, "query_time": self.query_time, "query_gap_floor": self.query_gap_floor}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        return cls(**{**data, "backbone": BackboneSpec(**data["backbone"])})


class LiteRecModel(nn.Module):
    """Item inputs -> backbone -> mean pooling (Eq. 4) -> dropout -> projection head (Eq. 5)."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module, item_vectors: torch.Tensor | None = None) -> None:
        super().__init__()
        self.spec = spec
        d = spec.backbone.d_model
        self.backbone = backbone
        if "text" in spec.item_repr:
            if item_vectors is None:
                item_vectors = torch.zeros(spec.n_items + 1, spec.item_dim)  # filled by load_state_dict
            self.register_buffer("item_vectors", item_vectors.detach().float().clone())  # (N+1, D_item), frozen
            self.adapter: nn.Module = nn.Linear(spec.item_dim, d) if spec.item_dim != d else nn.Identity()
        if "id" in spec.item_repr:
            self.item_embedding = nn.Embedding(spec.n_items + 1, d, padding_idx=0)
            nn.init.normal_(self.item_embedding.weight, std=0.02)
            with torch.no_grad():
                self.item_embedding.weight[0].zero_()
        if spec.time_bias:
            if not hasattr(backbone, "rel_bias"):
                raise ValueError("model.time_bias needs model.backbone=lean (the bias is added inside its attention)")
            # one bias per (time bucket, head), added to every layer's attention like T5's position bias;
            # zeros: training starts from the model without it
            self.time_bias = nn.Embedding(TIME_BUCKETS, spec.backbone.n_heads)
            nn.init.zeros_(self.time_bias.weight)
        if spec.history_logit:
            # zero: training starts from the model without it
            self.history_logit_param = nn.Parameter(torch.zeros(()))
        if spec.calendar:
            # zeros: training starts from the model without it, and months no training item fell in stay
            # "no calendar signal" (row 0 is padding and times before 1990)
            self.calendar_embedding = nn.Embedding(CALENDAR_BUCKETS, d, padding_idx=0)
            nn.init.zeros_(self.calendar_embedding.weight)
        if spec.query_time:
            # zeros: training starts from the model without it; row 0 (padding, no next time known) stays zero
            self.query_gap_embedding = nn.Embedding(N_GAPS, d, padding_idx=UNKNOWN_NEXT_GAP)
            nn.init.zeros_(self.query_gap_embedding.weight)
        if spec.uses_context_ids:
            self.context_embedding = nn.Embedding(n_contexts(spec.time_gaps, spec.ratings), d, padding_idx=PAD_CONTEXT)
            nn.init.normal_(self.context_embedding.weight, std=0.02)
            with torch.no_grad():
                self.context_embedding.weight[PAD_CONTEXT].zero_()
        self.input_dropout = nn.Dropout(spec.dropout)
        self.user_dropout = nn.Dropout(spec.dropout if spec.user_dropout is None else spec.user_dropout)
        if spec.head == "linear":
            self.head = nn.Linear(d, spec.n_items + 1, bias=spec.head_bias)  # W_proj of Eq. 5
        elif spec.head != "tied":
            raise ValueError(f"model head must be 'linear' or 'tied', got {spec.head!r}")

    @property
    def item_vectors_trainable(self) -> bool:
        return isinstance(getattr(self, "item_vectors", None), nn.Parameter)

    def unfreeze_item_vectors(self) -> None:
        """Stage 2 (PAPER.md): the cached item vectors become trainable, initialised from the cache.

        The state-dict key stays ``item_vectors``, so checkpoints load either way.
        """
        if "text" not in self.spec.item_repr or self.item_vectors_trainable:
            return
        vectors = self._buffers.pop("item_vectors")
        self.item_vectors = nn.Parameter(vectors.detach().clone())

    def item_representation(self, items: torch.Tensor) -> torch.Tensor:
        """item_idx of any shape (...) -> (..., D): adapted text vector, id embedding, or their sum."""
        x = 0
        if "text" in self.spec.item_repr:
            x = self.adapter(self.item_vectors[items])  # (..., D)
        if "id" in self.spec.item_repr:
            x = x + self.item_embedding(items)  # (..., D)
        return x

    def embed_items(self, items: torch.Tensor, item_dropout: float = 0.0,
                    contexts: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) item_idx -> (B, T, D) backbone inputs (``inputs_embeds``).

        ``contexts`` (B, T, C) context rows of the items (``item_context.py``), required by a model
        with ``spec.uses_context``; with ``spec.time_gaps`` or ``spec.ratings`` the embedding of
        their id is added to each item's vector, with ``spec.calendar`` the embedding of its month
        (``item_context.calendar_bucket``), with ``spec.query_time`` the embedding of its gap to
        the next item (``item_context.next_gap_index``); all after item dropout: a dropped item
        still says when it happened.

        ``query_time`` makes position t read the *time* of item t + 1 (for the last input, the
        time of the prediction): a causal model's prefix ending at t still never reads a later
        item's identity, but it does read when the item it predicts came (HSTU's convention).

        ``item_dropout`` (training only, ``train.item_dropout``): each input item's whole vector
        is zeroed with this probability, unscaled (a missing item, not noise on its features).
        Why: on ML-1m 53% of consecutive ratings share a timestamp, so which of them came just
        before a target is arbitrary in the log; a model that cannot always lean on the previous
        item has to read the rest of the history.
        """
        x = self.item_representation(items)  # (B, T, D)
        if self.training and item_dropout > 0:
            keep = torch.rand(items.shape, device=items.device) >= item_dropout  # (B, T)
            x = x * keep[..., None].to(x.dtype)
        if self.spec.uses_context_ids:
            x = x + self.context_embedding(self._contexts(items, contexts)[..., CONTEXT_ID])  # (B, T, D)
        if self.spec.calendar:
            x = x + self.calendar_embedding(calendar_bucket(self._contexts(items, contexts)[..., CONTEXT_TIME]))  # (B, T, D)
        if self.spec.query_time:
            x = x + self.query_gap_embedding(self._contexts(items, contexts)[..., CONTEXT_NEXT_GAP])  # (B, T, D)
        return self.input_dropout(x)

    def _contexts(self, items: torch.Tensor, contexts: torch.Tensor | None) -> torch.Tensor:
        """``contexts`` checked against ``items`` (B, T): (B, T, C)."""
        if contexts is None or contexts.dim() != 3 or contexts.shape[:2] != items.shape:
            got = "none" if contexts is None else f"shape {tuple(contexts.shape)}"
            raise ValueError(f"this model reads an input context ({CONTEXT_SETTINGS}): "
                             f"pass contexts (B, T, C) with the items {tuple(items.shape)}; got {got}")
        return contexts

    def attention_time_bias(self, items: torch.Tensor, contexts: torch.Tensor | None) -> torch.Tensor:
        """(B, H, T, T) additive attention bias of ``spec.time_bias``: entry [b, h, q, k] is the
        learned bias of head h for the bucket of |time(q) - time(k)| (``item_context.time_bucket``).
        Padding pairs get some bucket too; the backbone masks them anyway."""
        times = self._contexts(items, contexts)[..., CONTEXT_TIME]  # (B, T) Unix seconds
        buckets = time_bucket((times[:, :, None] - times[:, None, :]).abs())  # (B, T, T)
        return bucket_bias(buckets, self.time_bias.weight, onehot=buckets.is_cuda).permute(0, 3, 1, 2)  # (B, H, T, T)

    def output_items(self) -> torch.Tensor:
        """(N+1, D) fp32 item side of the scores: W_proj (Eq. 5), or with ``head="tied"`` every
        item's input representation, so the head has no parameters of its own.

        Why tie: a free W_proj learns one row per item from that item's targets alone; the tied
        head scores an item by the same (text-derived) vector the backbone reads, so rare items
        get a representation from their text and every occurrence of an item, input or target,
        trains the same weights (SASRec ties its embeddings the same way). Measured on ML-1m
        (docs/results.md, session 4): worse than W_proj with ``text`` alone (a linear adapter over
        frozen text vectors is too narrow to separate every target), equal with ``text+id``. With
        ``score="cosine"`` the rows are unit-normalised and divided by the temperature here, so
        serving needs only a matrix product with the normalised user vector.
        """
        if self.spec.head == "tied":
            every = torch.arange(self.spec.n_items + 1, device=self._device())  # (N+1,)
            weight = self.item_representation(every).float()  # callers run it outside autocast
        else:
            weight = self.head.weight.float()
        if self.spec.score == "cosine":
            weight = F.normalize(weight, dim=-1) / self.spec.temperature
        return weight  # (N+1, D)

    def output_bias(self) -> torch.Tensor | None:
        """(N+1,) per-item score bias of the linear head (``model.head_bias``); None otherwise."""
        return self.head.bias if self.spec.head == "linear" else None

    def history_logit(self) -> torch.Tensor:
        """The learned score () added to every item the user already has (``spec.history_logit``).

        Why a scale: AdamW moves a parameter by at most about lr per step whatever the size of
        its gradient, so a bare one could travel at most ~10 logits over all ~4,800 steps of an
        ML-1m run at lr 2e-3, and less as its gradient fades (the seen items' probability it
        pushes down). Where users never repeat an item, the useful value is below every unseen
        item a top-10 could hold: ML-1m runs learn about -9 (docs/results.md, session 11). With
        one unit of the parameter worth 16 logits, the step size is no longer what limits it.
        """
        return HISTORY_LOGIT_SCALE * self.history_logit_param

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def contextualize(self, items: torch.Tensor, item_dropout: float = 0.0,
                      contexts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        real = items > 0  # (B, T)
        x = self.embed_items(items, item_dropout, contexts)  # (B, T, D)
        if self.spec.time_bias:
            hidden = self.backbone(x, real, self.spec.causal, extra_bias=self.attention_time_bias(items, contexts))
        else:
            hidden = self.backbone(x, real, self.spec.causal)  # (B, T, D)
        return hidden, real

    def user_vectors(self, items: torch.Tensor, item_dropout: float = 0.0, contexts: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 4: h_u = mean of the outputs over the real (non-padding) positions. (B, T) -> (B, D).

        With ``pooling="last"`` h_u is the output at the last real position instead: over long
        histories (max_seq_len 200) a mean dilutes the most recent items, which carry most of
        the next-item signal on MovieLens; the paper's 20-item window hides that effect.
        """
        hidden, real = self.contextualize(items, item_dropout, contexts)
        if self.spec.pooling == "last":
            positions = torch.arange(items.shape[1], device=items.device)  # (T,)
            last = (real.long() * positions).argmax(1)  # (B,) index of the last real item, any padding side
            return hidden.float()[torch.arange(items.shape[0], device=items.device), last]  # (B, D)
        summed = hidden.float().masked_fill(~real[..., None], 0.0).sum(1)  # (B, D); where(), not *: no NaN leak
        return summed / real.sum(1, keepdim=True).clamp(min=1)

    def prefix_user_vectors(self, items: torch.Tensor, item_dropout: float = 0.0,
                            contexts: torch.Tensor | None = None) -> torch.Tensor:
        """Causal models: h_u of every prefix from one pass. (B, T) right-padded -> (B, T, D).

        Row t is the mean of the causal outputs 0..t, which equals ``user_vectors`` of the prefix
        ``items[:, :t+1]`` because causal outputs at positions <= t never see later items.
        """
        if not self.spec.causal:
            raise ValueError("prefix_user_vectors needs a causal model (train.strategy=onepass)")
        hidden, real = self.contextualize(items, item_dropout, contexts)
        if self.spec.pooling == "last":
            return hidden.float().masked_fill(~real[..., None], 0.0)  # (B, T, D): the prefix's own last output
        running = hidden.float().masked_fill(~real[..., None], 0.0).cumsum(1)  # (B, T, D)
        return running / real.long().cumsum(1).clamp(min=1)[..., None]

    def item_logits(self, user: torch.Tensor) -> torch.Tensor:
        """Eq. 5: (..., D) -> (..., N + 1) scores of all items; padding can never be recommended.

        Always in fp32, also under bf16 autocast: bf16 keeps ~3 significant digits, so thousands
        of item scores would tie and ties change ranks (``metrics.py``); the head is a small
        share of the step's compute.
        """
        with torch.autocast(user.device.type, enabled=False):
            user = self.user_dropout(user.float())
            if self.spec.score == "cosine":
                user = F.normalize(user, dim=-1)
            logits = F.linear(user, self.output_items(), self.output_bias())  # (..., N+1)
        logits[..., 0] = float("-inf")
        return logits

    def forward(self, items: torch.Tensor, targets: torch.Tensor | None = None,
                exclude_history: bool = False, future_weight: float = 0.5,
                item_dropout: float = 0.0, seen: torch.Tensor | None = None,
                contexts: torch.Tensor | None = None,
                history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores (and the Eq. 6 loss when targets are given).

        - ``targets`` (B,): one next item per sample -> logits (B, N+1).
        - ``targets`` (B, T) on a causal model: the next item at every position (IGNORE_INDEX where
          none) -> logits (B, T, N+1) and the mean cross-entropy over supervised positions.
        - ``targets`` (B, T, F) on a causal model: the next F items of every position (F > 1,
          ``train.future_targets``) -> logits (B, T, N+1) and a weighted mean cross-entropy of
          one softmax against each of them: weight 1 for the next item, ``future_weight`` for
          the F - 1 after it (``future_loss``).
        - no targets: scores for inference, (B, N+1).

        ``exclude_history`` (training only, ``train.loss_excludes_history``): the softmax leaves
        out the items already in each sample's input (each prefix's, for (B, T) targets), the
        training counterpart of ``eval.exclude_history``: the model is then never asked to push
        down items the ranking removes anyway. The target itself always stays in. ``seen`` (B, N+1)
        bool, with ``exclude_history``: items the user had before the input window, also left out
        (``train.loss_history_scope=user``; ``BatchMaker.seen_before``). ``item_dropout`` and
        ``contexts`` (B, T, C): ``embed_items``.

        With ``spec.history_logit`` the learned history score is added to the items the user
        already has (``add_history_logit``): in training each sample's input (each prefix's, for
        (B, T) targets) and ``seen``; at inference the items of ``history`` (B, H), every item
        of the user (0-padded). Without ``history`` inference scores leave it out (serving adds
        it over the whole history itself: ``Recommender.score_indices``).
        """
        if targets is not None and targets.dim() >= 2:
            logits = self.item_logits(self.prefix_user_vectors(items, item_dropout, contexts))  # (B, T, N+1)
        else:
            logits = self.item_logits(self.user_vectors(items, item_dropout, contexts))  # (B, N+1)
        if self.spec.history_logit and (targets is not None or history is not None):
            logits = add_history_logit(logits, items, self.history_logit(), seen=seen, history=history)
        if targets is None:
            return logits, None
        nxt = targets[..., 0] if targets.dim() == 3 else targets  # (B, T) or (B,): the next item
        if exclude_history:
            logits = mask_history(logits, items, nxt, seen)
        if targets.dim() == 3:
            return logits, future_loss(logits, targets, future_weight)
        loss = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss


def bucket_bias(buckets: torch.Tensor, weight: torch.Tensor, onehot: bool) -> torch.Tensor:
    """``weight[buckets]``: (...) bucket ids, (K, H) table -> (..., H), by lookup or one-hot product.

    Why two forms of one value: the lookup's backward adds every entry's gradient into K rows
    (B*T*T = 5.1M entries into 32 rows for an ML-1m batch); on the compiled GPU path an epoch
    took twice as long with it (docs/benchmarks.md, session 10; most likely atomics contended on
    those few addresses). A one-hot product's backward is one matrix product: +8% per epoch over
    the model without the bias there. On a CPU the lookup is
    the faster one (7x compiled, 3.6x eager, on this project's 2-core VM).
    """
    if not onehot:
        return F.embedding(buckets, weight)
    hot = buckets[..., None] == torch.arange(weight.shape[0], device=buckets.device)  # (..., K)
    return hot.to(weight.dtype) @ weight


def future_loss(logits: torch.Tensor, targets: torch.Tensor, future_weight: float) -> torch.Tensor:
    """Weighted mean of -log softmax(logits)[target] over the next F items of every position.

    logits (B, T, N+1); targets (B, T, F), IGNORE_INDEX where there is no such item. Column 0 is
    the next item (weight 1), columns 1.. the items after it (weight ``future_weight``). A later
    item that the softmax leaves out (-inf: already in the input, under ``mask_history``) is
    skipped, not an infinite loss.

    Why it exists: on MovieLens many ratings share a timestamp (53% of consecutive ML-1m
    ratings), so their order in the log is arbitrary and the items a few steps ahead looked
    nearly as much "what this user watches next" as the very next one; PinnerFormer's dense
    all-action loss supervises such a window. Measured on ML-1m (docs/results.md, session 5) it
    is worse: -0.019 masked R@10 with F = 3 at weight 0.5, more with F = 5 or weight 1. It stays
    as an option (off by default) for catalogues where order within a session is noise.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, N+1)
    picked = logp.gather(-1, targets.clamp(min=0))  # (B, T, F)
    weight = torch.full((targets.shape[-1],), future_weight, device=logits.device)  # (F,)
    weight[0] = 1.0
    use = (targets != IGNORE_INDEX) & torch.isfinite(picked)  # (B, T, F)
    w = use * weight  # (B, T, F)
    return -(picked.masked_fill(~use, 0.0) * w).sum() / w.sum().clamp(min=1e-12)


def add_history_logit(logits: torch.Tensor, items: torch.Tensor, value: torch.Tensor,
                      seen: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` plus ``value`` at every item the user already has; a new tensor.

    - logits (B, T, N+1), items (B, T): at position t, the items at positions 0..t (each
      prefix's own history, as ``mask_history``; the target is never among them unless it is a
      repeat, which is how the value learns whether users repeat items).
    - logits (B, N+1): the items of ``history`` (B, H) if given (the whole history at
      evaluation and serving), else of ``items``.
    - seen (B, N+1) bool, optional: items from before the input window, at every position.

    Each item counts once however often it occurs. Column 0 (padding) is -inf and stays so.
    For (B, T, N+1) logits no mask of that size is built: a repeat inside the window and an item
    already in ``seen`` are pointed at column 0, and one in-place scatter adds the value at the
    rest of the window's items, so the result is the only new logits-sized tensor (as with
    ``mask_history``); adding the value times a mask would also build a bool mask and a float
    product of that size.

    Why: on MovieLens no user rates a movie twice, so every item of the history is a wrong
    answer; a model scored without the evaluation's mask (the paper's unmasked tables) has to
    learn that from its inputs alone, one item at a time. One learned score learns it for all
    items at once, from the data (on a catalogue where users do come back to items, it learns a
    positive score), and is exactly zero at the start.
    """
    if logits.dim() == 2:  # a (B, N+1) mask is as small as the logits' batch
        index = items if history is None else history  # (B, H)
        has = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter(-1, index, True)
        if seen is not None:
            has = has | seen
        return logits + value * has  # column 0: -inf + anything finite = -inf
    t = items.shape[1]
    earlier = torch.ones(t, t, dtype=torch.bool, device=items.device).tril(-1)  # (T, T): s' < s
    repeat = ((items[:, :, None] == items[:, None, :]) & earlier).any(-1)  # (B, T): came earlier in the window
    index = prefix_index(items.masked_fill(repeat, 0))  # (B, T, T): each item once per row, 0 elsewhere
    if seen is not None:
        out = logits + value * seen[:, None, :]  # (B, T, N+1): (B, 1, N+1) broadcast, the items before the window
        index = index.masked_fill(seen.gather(-1, index.flatten(1)).view_as(index), 0)  # ... scored once
    else:
        out = logits.clone()
    # read from the input, written into the new tensor: column 0 gets -inf back, however often
    return out.scatter_(-1, index, logits.gather(-1, index) + value)


def prefix_index(items: torch.Tensor) -> torch.Tensor:
    """(B, T) item_idx -> (B, T, T): row [b, t] holds the items of positions 0..t of ``items[b]``
    and 0 (the padding column) at later positions: the scatter index of each prefix's history
    (``mask_history``, ``add_history_logit``)."""
    t = items.shape[1]
    later = torch.ones(t, t, dtype=torch.bool, device=items.device).triu(1)  # (T, T): s > t
    return items[:, None, :].expand(-1, t, -1).masked_fill(later, 0)  # [b, t, s] = items[b, s] for s <= t


def mask_history(logits: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                 seen: torch.Tensor | None = None) -> torch.Tensor:
    """``logits`` with -inf at the items of each sample's input, except its target; a new tensor.

    - targets (B,): logits (B, N+1), items (B, T): the items of each row.
    - targets (B, T): logits (B, T, N+1): at position t, the items at positions 0..t.
    - seen (B, N+1) bool, optional: items from before the input window, masked at every position
      of the row, again except each position's target (a repeat of an earlier item stays learnable).

    One scatter with a (B, T, T) index (item ids of each prefix; later positions and the target
    point at column 0, the padding column, which is -inf anyway): no (B, T, N+1) mask is ever
    built, which matters for large catalogues where the logits alone take gigabytes.
    """
    if targets.dim() == 1:
        index = items.masked_fill(items == targets[:, None], 0)  # (B, T)
    else:
        index = prefix_index(items)  # (B, T, T)
        index = index.masked_fill(index == targets[..., None], 0)  # targets are never 0
    logits = logits.scatter(-1, index, float("-inf"))
    if seen is None:
        return logits
    target = targets.clamp(min=0)[..., None]  # (B, 1) or (B, T, 1); IGNORE_INDEX -> column 0, -inf anyway
    kept = logits.gather(-1, target)  # the target's logit, before the seen items go
    rows = seen if logits.dim() == 2 else seen[:, None, :]  # (B, N+1) or (B, 1, N+1)
    return logits.masked_fill(rows, float("-inf")).scatter(-1, target, kept)


def build_model(
    model_cfg: "ModelConfig", n_items: int, item_vectors: torch.Tensor | None, *, causal: bool
) -> tuple[LiteRecModel, str]:
    """Build the recommendation model from config; returns it and how the backbone was initialised.

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
    spec = ModelSpec(
        n_items=n_items,
        item_dim=int(item_vectors.shape[1]) if needs_text and item_vectors is not None else 0,
        item_repr=model_cfg.item_repr, max_seq_len=model_cfg.max_seq_len, dropout=model_cfg.dropout,
        causal=causal, head_bias=model_cfg.head_bias, backbone_name=model_cfg.backbone, backbone=bspec,
        pooling=model_cfg.pooling, head=model_cfg.head, score=model_cfg.score,
        temperature=model_cfg.temperature if model_cfg.score == "cosine" else 1.0,
        user_dropout=model_cfg.user_dropout, time_gaps=model_cfg.time_gaps, ratings=model_cfg.ratings,
        time_bias=model_cfg.time_bias, history_logit=model_cfg.history_logit, calendar=model_cfg.calendar,
        query_time=model_cfg.query_time, query_gap_floor=model_cfg.query_gap_floor,
    )
    return LiteRecModel(spec, backbone, item_vectors if needs_text else None), note


def model_from_spec(spec: ModelSpec) -> LiteRecModel:
    """An untrained model of the saved architecture (weights come from the safetensors file)."""
    return LiteRecModel(spec, build_from_spec(spec.backbone))
