"""The model's settings (the ``model`` section of the config): typed once, here, for training and serving.

Why a standard-library dataclass and not a pydantic model like the other sections: the same
object travels from the config (``lite_rec.core.config.LiteRecConfig.model``, which pydantic
validates as a dataclass field) into the model's spec (``lite_rec.model.spec.ModelSpec.config``)
and from there into a bundle's ``model.json``, which is read where only torch, transformers,
safetensors, numpy, pandas and pyarrow are installed. So the ranges and choices are checked in
``__post_init__``, with or without pydantic, and errors name the field (``model.dropout``).
Adding a model setting means adding one field here.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["ModelConfig"]

ItemRepr = Literal["text", "id", "text+id"]
Pooling = Literal["mean", "last"]
Head = Literal["linear", "inductive"]
CHOICES: dict[str, tuple[str, ...]] = {"item_repr": get_args(ItemRepr), "pooling": get_args(Pooling), "head": get_args(Head)}
# field: (lowest allowed, highest allowed or None, whether the highest is excluded)
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "d_model": (8, None, False),
    "n_layers": (1, None, False),
    "n_heads": (1, None, False),
    "d_ff": (8, None, False),
    "dropout": (0.0, 1.0, True),
    "backbone_dropout": (0.0, 1.0, True),
    "max_seq_len": (1, None, False),
    "query_gap_floor": (0, None, False),
    "head_id_dropout": (0.0, 1.0, False),
}
INTEGERS = ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "query_gap_floor")


@dataclass(frozen=True)
class ModelConfig:
    """The recommendation LLM and its item projection head (Eq. 4-5 of the paper), plus the inputs
    beyond the paper that measured as gains."""

    # pydantic reads this when LiteRecConfig validates the section: unknown keys are errors
    __pydantic_config__ = {"extra": "forbid"}

    backbone: str = "t5-small"  # "t5-small" (HF T5 encoder), "lean" (SDPA T5-style encoder) or any HF encoder name/path
    pretrained: bool = True  # load backbone weights when reachable, else random init
    d_model: int = 512  # used when the backbone is built from scratch
    n_layers: int = 6
    n_heads: int = 8
    d_ff: int = 2048
    dropout: float = 0.7  # on the item inputs and on the user vector
    backbone_dropout: float = 0.1  # inside the backbone (attention, residual, FFN)
    item_repr: ItemRepr = "text"  # cached text vectors through an adapter, a learned id embedding, or their sum
    max_seq_len: int = 20  # input items per user (the paper uses 20 + target)
    pooling: Pooling = "mean"  # user vector: mean of the outputs (Eq. 4) or the last real position's output
    # one learned score added to every item the user already has (scoring.add_history_logit): the model
    # learns from the data whether users come back to items
    history_logit: bool = False
    # the item output vectors Eq. 5 scores against: "linear" = the paper's W_proj, one learned row per training item;
    # "inductive" = a learned projection of the item's cached text vector plus a learned id part for items seen in
    # training, so an item known only by its text gets a vector (lite-rec add-items; needs "text" in item_repr)
    head: Head = "linear"
    # inductive head: share of items whose id part is left out of each training step, so the text part alone must
    # score them well (as it will for new items, which have no id part); 1.0 = no id part (the text part only)
    head_id_dropout: float = 0.5

    # Inputs beyond the paper: a context per input item (lite_rec/model/context.py), read from
    # sequences.parquet's *_ts / *_rating columns; requests carry them as events (docs/serving.md).
    time_gaps: bool = False  # each item's gap to the user's previous item, embedded and added to it
    ratings: bool = False  # the rating the user gave each item, embedded and added to it
    time_bias: bool = False  # attention biased by the time between query and key items (lean backbone only)
    query_time: bool = False  # each item's gap to the next item, the last one's to the time of the prediction
    query_gap_floor: int = 0  # seconds: with query_time, next gaps shorter than this all read as one

    def __post_init__(self) -> None:
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"model.{name} must be one of {', '.join(map(repr, choices))} "
                                 f"(got {getattr(self, name)!r})")
        for name, (low, high, open_high) in RANGES.items():
            value = getattr(self, name)
            kind = int if name in INTEGERS else int | float
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ValueError(f"model.{name} must be {'an integer' if kind is int else 'a number'} (got {value!r})")
            if value < low or (high is not None and (value >= high if open_high else value > high)):
                bound = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
                raise ValueError(f"model.{name} must be {bound} (got {value!r})")
        if self.head == "inductive" and "text" not in self.item_repr:
            raise ValueError(f"model.head=inductive computes item vectors from their text; model.item_repr={self.item_repr!r} "
                             "has none (use text or text+id)")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if self.time_bias and self.backbone != "lean":
            raise ValueError(f"model.time_bias needs model.backbone=lean (the bias is added inside its attention); "
                             f"got model.backbone={self.backbone!r}")
        if self.query_gap_floor and not self.query_time:
            raise ValueError(f"model.query_gap_floor={self.query_gap_floor} coarsens the gap model.query_time reads; "
                             "set model.query_time=true as well, or leave the floor at 0")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """The settings of a ``to_dict()`` (a bundle's or a run's ``model.json``); an unknown key is
        an error naming it and the closest valid one."""
        names = cls.field_names()
        unknown = [k for k in data if k not in names]
        if unknown:
            hint = difflib.get_close_matches(unknown[0], names, n=1)
            raise ValueError(f"unknown model setting 'model.{unknown[0]}'"
                             + (f"; did you mean 'model.{hint[0]}'?" if hint else "")
                             + f" (valid: {', '.join(names)})")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_context(self) -> bool:
        """Whether the model reads an input context per item (``contexts=``)."""
        return self.time_gaps or self.ratings or self.time_bias or self.query_time

    @property
    def uses_context_ids(self) -> bool:
        """Whether the context rows' id column is read (an embedding added to each item)."""
        return self.time_gaps or self.ratings

    @property
    def reads_timestamps(self) -> bool:
        """Whether the input context is built from the items' timestamps (all inputs but ``ratings``)."""
        return self.time_gaps or self.time_bias or self.query_time

    @property
    def context_features(self) -> dict[str, bool | int]:
        """The input-context features read, as ``context.item_contexts`` takes them."""
        return {"time_gaps": self.time_gaps, "ratings": self.ratings, "time_bias": self.time_bias,
                "query_time": self.query_time, "query_gap_floor": self.query_gap_floor}
