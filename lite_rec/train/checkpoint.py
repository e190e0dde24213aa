"""Saving and restoring training runs: final models, best weights and resume checkpoints.

Why atomic writes everywhere: a run can be killed at any instant (pre-emption, Ctrl-C, OOM). Every
file is written to a temporary name in the same directory and moved into place with
``os.replace``, so a reader sees either the old complete file or the new complete file, and a
crash never corrupts the checkpoint a restart depends on.

Formats:
- model weights: safetensors (no pickle; loadable by serving code), plus a JSON with the
  architecture spec (which holds the model's settings) and the rest of the resolved config;
- resume checkpoints (``checkpoints/resume.pt``): ``torch.save`` of model, optimizer and
  scheduler state, every RNG state (python, numpy, torch CPU and CUDA), the position in the
  run (stage, epoch, step in epoch) and the early-stopping state; ``resume.json`` beside it
  summarises the position for humans and tests. Loaded with ``weights_only=True``: only plain
  containers and tensors, no pickled objects.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lite_rec.core.config import dotted
from lite_rec.core.errors import CacheMismatch
from lite_rec.core.io import atomic_write, write_json
from lite_rec.model.rec_llm import LiteRecModel, model_from_spec
from lite_rec.model.spec import ModelSpec

RESUME_FILE = "resume.pt"
RESUME_SUMMARY = "resume.json"
BEST_WEIGHTS = "best.safetensors"
MODEL_WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
# what resume.json says about a run (for humans, tests, and the launcher of a multi-process run)
SUMMARY_KEYS = ("stage", "epoch", "step", "global_step", "done", "stopped_early", "budget_exhausted", "world_size")


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict as independent contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def save_weights(model: torch.nn.Module, path: Path) -> None:
    atomic_write(Path(path), lambda tmp: save_file(_tensors(model), tmp))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    state = load_file(str(path))
    model.load_state_dict(state, strict=True)


def save_model(model: LiteRecModel, out_dir: Path, meta: dict[str, Any]) -> Path:
    """``model.safetensors`` + ``model.json`` (``spec`` rebuilds the architecture offline)."""
    out_dir = Path(out_dir)
    save_weights(model, out_dir / MODEL_WEIGHTS)
    write_json(out_dir / MODEL_META, {**meta, "spec": model.spec.to_dict()})
    return out_dir / MODEL_WEIGHTS


def load_model(model_dir: Path, device: torch.device | str = "cpu") -> tuple[LiteRecModel, dict[str, Any]]:
    """Rebuild a saved model (no download: the spec holds the backbone's config) in eval mode."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / MODEL_META).read_text(encoding="utf-8"))
    model = model_from_spec(ModelSpec.from_dict(meta["spec"]))
    load_weights(model, model_dir / MODEL_WEIGHTS)
    return model.to(device).eval(), meta


# ---------------------------------------------------------------------------------------------
# RNG state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng(all_devices: bool = True) -> dict[str, Any]:
    """Python, numpy (global), torch CPU and CUDA generator states, as weights_only-safe values.

    ``all_devices=False`` (a DDP rank) keeps the current CUDA device's state only: reading every
    device's would create a CUDA context on each GPU of the host from every rank."""
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = (torch.cuda.get_rng_state_all() if all_devices else [torch.cuda.get_rng_state()]) if torch.cuda.is_available() else []
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng(state: dict[str, Any], all_devices: bool = True) -> None:
    """Put back a :func:`capture_rng` state; ``all_devices=False`` sets the current CUDA device's from its first entry."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if all_devices:
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"][0])


# ---------------------------------------------------------------------------------------------
# Resume checkpoints


def save_resume(ckpt_dir: Path, state: dict[str, Any]) -> None:
    """Write the resume checkpoint, then its summary (both atomic)."""
    ckpt_dir = Path(ckpt_dir)
    atomic_write(ckpt_dir / RESUME_FILE, lambda tmp: torch.save(state, tmp))
    summary = {k: state[k] for k in SUMMARY_KEYS if k in state}
    write_json(ckpt_dir / RESUME_SUMMARY, summary)


def load_resume(ckpt_dir: Path) -> dict[str, Any] | None:
    path = Path(ckpt_dir) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a resume file we cannot read must not be silently ignored
        raise CacheMismatch(f"{path}: unreadable resume checkpoint ({type(exc).__name__}: {exc}); delete it to start over") from None


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: Path,
                      defaults: dict[str, Any] | None = None) -> None:
    """Refuse to resume a checkpoint written for other settings or data; name what differs.

    Settings compare one by one (``train.lr``, ...). A setting the checkpoint does not record
    (added to lite-rec after it was written) matches when its current value is its default in
    ``defaults`` (same nesting as the fingerprint): an upgrade must not strand a running job.
    """
    old, new, default = dotted(saved), dotted(current), dotted(defaults or {})
    missing = object()
    diff = []
    for key in sorted(set(old) | set(new)):
        before, now = old.get(key, missing), new.get(key, missing)
        if before is missing and key in default and now == default[key]:
            continue
        if before != now:
            shown = ["(not recorded)" if v is missing else repr(v) for v in (before, now)]
            diff.append(f"{key}: checkpoint {shown[0]} vs now {shown[1]}")
    if diff:
        raise CacheMismatch(
            f"{path} was written by a different run ({'; '.join(diff[:5])}"
            f"{' ...' if len(diff) > 5 else ''}); use another --out directory or delete the checkpoint"
        )
