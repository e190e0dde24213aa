"""What rebuilds a trained model's architecture without downloading anything: :class:`ModelSpec`.

A spec is the model's settings (:class:`~lite_rec.core.model_config.ModelConfig`, the ``model``
section of the config, kept whole) plus what only building the model decides: the catalogue
size, the width of the cached item vectors, whether attention is causal (one-pass training) and
the backbone's resolved sizes. Training writes it into a run's ``model.json``, a bundle carries
it, and serving rebuilds the model from it, so every stage reads the same settings
(``spec.config.pooling``, ``spec.config.max_seq_len``, ...). Imports no pydantic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lite_rec.core.model_config import ModelConfig
from lite_rec.model.backbone import BackboneSpec

__all__ = ["ModelConfig", "ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the architecture; saved as JSON next to the weights."""

    n_items: int  # N: item_idx runs 1..N, the head has N + 1 outputs (0 = padding)
    item_dim: int  # width of the cached item vectors (0 when config.item_repr == "id")
    causal: bool  # causal attention + prefix pooling (train.strategy=onepass)
    backbone: BackboneSpec  # the backbone as built (sizes, kind, an HF model's own config)
    config: ModelConfig  # the model's settings, as configured

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        """The spec of a ``to_dict()``; a spec written before the settings moved into it (its
        settings beside ``n_items``, no ``config``) is refused with what to do about it."""
        if "config" not in data:
            raise ValueError("this model was saved by an older lite-rec (its spec has no 'config'); "
                             "retrain it with this lite-rec, or load it with the lite-rec that trained it")
        fields = {"n_items", "item_dim", "causal", "backbone", "config"}
        if set(data) != fields:
            raise ValueError(f"a model spec has exactly the keys {sorted(fields)}; got {sorted(data)}")
        return cls(n_items=int(data["n_items"]), item_dim=int(data["item_dim"]), causal=bool(data["causal"]),
                   backbone=BackboneSpec(**data["backbone"]), config=ModelConfig.from_dict(data["config"]))
