"""The scoring step as a portable ONNX file, for serving with ONNX Runtime or Triton Inference Server.

Why: users who serve outside Python (ONNX Runtime in C++/Java/C#, the Triton Inference Server's
ONNX backend) need the model without torch or this package. What is exported is the model's
inference function as :class:`~lite_rec.infer.lean_runner.LeanRunner` computes it in fp32 (lean
and HF-T5 backbones: the top layer at the last position only for ``pooling: last``; other HF
encoders: the model's own forward), so the file gives the scores ``lite-rec serve`` computes.

The graph (``torch.onnx.export(..., dynamo=True)``, ONNX opset :data:`OPSET`):

- inputs: ``items`` int64 (batch, length): item_idx 1..N of each history, oldest first,
  right-padded with 0 (padding) to a common length 1..``max_seq_len``; a longer history keeps
  its last ``max_seq_len`` items. A model that reads per-item contexts (``model.time_gaps`` /
  ``ratings`` / ``time_bias`` / ``query_time``) also takes ``contexts`` int64 (batch, length, 3):
  context id, Unix time (s), next-gap index per item (``lite_rec.model.context``), 0 where padding.
  Both axes are dynamic.
- outputs: ``scores`` float32 (batch, N+1): the score of every item_idx (column 0, padding, is
  -inf); the learned history score (``model.history_logit``) is not in it (the sidecar gives its
  value: add it to the items a user has, or mask them, as ``exclude_history`` does). With
  ``top_k`` > 0 also ``top_scores`` float32 (batch, k) and ``top_items`` int64 (batch, k): the
  best k item_idx after masking the items of the input window (``exclude_history`` for
  histories no longer than the window).

A sidecar JSON (``<file>.json``) holds what a server needs beside the graph: the item ids in
item_idx order, the opset, the inputs and outputs, ``max_seq_len``, the history score, the
bundle's fingerprint. Imports onnx/onnxscript only through ``torch.onnx``, when exporting.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lite_rec.core.errors import DataError
from lite_rec.core.io import atomic_write, write_json
from lite_rec.infer.bundle import Bundle
from lite_rec.infer.lean_runner import LeanRunner, supports
from lite_rec.model.context import CONTEXT_COLUMNS
from lite_rec.model.rec_llm import LiteRecModel, model_from_spec

__all__ = ["OPSET", "ScoringStep", "export_onnx", "sidecar_path"]

OPSET = 18  # ONNX Runtime >= 1.14, Triton Inference Server's ONNX backend since 23.x


class ScoringStep(nn.Module):
    """``(items (B, T)[, contexts (B, T, C)]) -> scores (B, N+1) [, top_scores (B, k), top_items (B, k)]``."""

    def __init__(self, model: LiteRecModel, top_k: int = 0) -> None:
        super().__init__()
        self.plan: nn.Module = LeanRunner(model, torch.float32, attention="sdpa") if supports(model) else model
        self.top_k = top_k
        self.uses_context = model.spec.config.uses_context

    def forward(self, items: torch.Tensor, contexts: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        if isinstance(self.plan, LeanRunner):
            scores = self.plan(items, contexts)  # (B, N+1)
        else:
            scores = self.plan(items, contexts=contexts)[0]
        if not self.top_k:
            return (scores,)
        masked = scores.scatter(1, items, float("-inf"))  # the window's items; column 0 is -inf already
        top = torch.topk(masked, self.top_k, dim=1)
        return scores, top.values, top.indices


def sidecar_path(out: Path | str) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def _model(bundle: Bundle) -> LiteRecModel:
    model = model_from_spec(bundle.spec)
    try:
        model.load_state_dict(bundle.tensors, strict=True)
    except RuntimeError as exc:
        raise DataError(f"{bundle.path}: weights do not fit the saved architecture: {exc}") from None
    return model.eval()


def export_onnx(bundle: Bundle, out: Path | str, *, top_k: int = 0, opset: int = OPSET) -> dict[str, Any]:
    """Write `bundle`'s scoring step to `out` (ONNX) and its sidecar JSON; returns the sidecar.

    Raises :class:`DataError` when ``top_k`` exceeds the catalogue or the exporter fails (with
    its reason)."""
    out = Path(out)
    spec = bundle.spec
    window = spec.config.max_seq_len
    if not 0 <= top_k <= spec.n_items:
        raise DataError(f"--top-k must be between 0 and the catalogue's {spec.n_items} items, got {top_k}")
    model = _model(bundle)
    step = ScoringStep(model, top_k).eval()
    t = min(3, window)
    items = torch.zeros(2, t, dtype=torch.long)  # right-padded examples: the graph does not depend on them
    items[0, :t], items[1, :1] = torch.arange(1, t + 1) % spec.n_items + 1, 1
    batch, length = torch.export.Dim("batch", min=1, max=65_536), torch.export.Dim("length", min=1, max=window)
    shapes: dict[str, Any] = {"items": {0: batch, 1: length}}
    args: tuple[torch.Tensor, ...] = (items,)
    names = ["items"]
    if step.uses_context:
        args += (torch.zeros(2, t, CONTEXT_COLUMNS, dtype=torch.long),)
        shapes["contexts"] = {0: batch, 1: length}
        names.append("contexts")
    outputs = ["scores"] + (["top_scores", "top_items"] if top_k else [])
    out.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")  # it warns about every optional package it cannot find
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*")  # two inputs share the batch and length axes
            program = torch.onnx.export(step, args, dynamo=True, dynamic_shapes=shapes, opset_version=opset, verbose=False,
                                        input_names=names, output_names=outputs, external_data=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the user needs the reason
        raise DataError(f"{bundle.path}: the ONNX export failed ({type(exc).__name__}: {str(exc)[:500]})") from None
    finally:
        quiet.setLevel(level)
    atomic_write(out, lambda tmp: program.save(tmp, external_data=False))
    sidecar = _sidecar(bundle, out, opset, names, outputs, top_k)
    write_json(sidecar_path(out), sidecar)
    return sidecar


def _sidecar(bundle: Bundle, out: Path, opset: int, inputs: list[str], outputs: list[str], top_k: int) -> dict[str, Any]:
    spec = bundle.spec
    n, window = spec.n_items, spec.config.max_seq_len
    shapes = {
        "items": {"dtype": "int64", "shape": ["batch", "length"],
                  "meaning": f"item_idx 1..{n} per history, oldest first, right-padded with 0; length 1..{window}"},
        "contexts": {"dtype": "int64", "shape": ["batch", "length", CONTEXT_COLUMNS],
                     "meaning": "per item: context id, Unix time in seconds, next-gap index (lite_rec.model.context); 0 where padding"},
        "scores": {"dtype": "float32", "shape": ["batch", n + 1],
                   "meaning": "score of every item_idx 0..N (0 = padding, always -inf); no history score added"},
        "top_scores": {"dtype": "float32", "shape": ["batch", top_k], "meaning": "best scores after masking the input items"},
        "top_items": {"dtype": "int64", "shape": ["batch", top_k], "meaning": "their item_idx; item_ids[item_idx - 1] is the raw id"},
    }
    history = float(_model(bundle).history_logit().detach()) if spec.config.history_logit else None
    return {
        "format": "lite-rec-onnx", "format_version": 1, "file": out.name, "opset": opset, "torch": torch.__version__,
        "inputs": [{"name": k, **shapes[k]} for k in inputs], "outputs": [{"name": k, **shapes[k]} for k in outputs],
        "dynamic_axes": ["batch", "length"], "max_seq_len": window, "n_items": n, "top_k": top_k,
        "padding": "right, item_idx 0", "history_logit": history,
        "history_rule": "mask the user's items (exclude_history) or add history_logit to their scores, then rank",
        "dataset": bundle.dataset, "bundle_fingerprint": bundle.fingerprint, "model": spec.to_dict(),
        "item_ids": bundle.items["item_id"].astype(str).tolist(),  # item_ids[i] is item_idx i + 1
    }
