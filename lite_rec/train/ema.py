"""An exponential moving average (EMA) of the trainable weights, used for validation and the kept model.

Why: stage 1 runs at a constant learning rate (a cosine decay to 0 measured worse on ML-1m,
docs/results.md), so the weights at any epoch end are one noisy point of a wide basin. Averaging
the recent iterates removes that noise without lowering the step size that keeps training
productive.

The decay of step t (counted from the last ``reset``) is ``min(d, (1 + t) / (10 + t))``, the
warm-up of TensorFlow's ExponentialMovingAverage: the first steps after a start follow the
weights instead of dragging the random init along. Until ``(1 + t) / (10 + t)`` reaches d, at
t = 9 d / (1 - d) (about 9,000 steps for d = 0.999), the average covers roughly the last tenth
of the steps so far; only after that does it settle at about ``1 / (1 - d)`` steps. So d is an
upper bound on how long the memory gets, and on short runs it never binds: ML-1m's 70 onepass
epochs at batch 128 are 4,760 steps, so with d = 0.999 (or 0.9997) the kept weights average
about the last 500 steps (7 epochs) at the end of stage 1. (A bias-corrected average, whose
memory d sets from the start, measured no better.) Stage 2 resets the average at its start
(its item vectors become a trainable parameter, and it starts from the best stage-1 weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class WeightEMA:
    """Shadow copies of a module's trainable parameters, updated in place after each optimizer step."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) to average weights, got {decay}")
        self.model, self.decay = model, decay
        self.reset()

    def reset(self) -> None:
        """Start a new average at the current weights, over the parameters trainable now (call it
        again after freezing or unfreezing any)."""
        trainable = [(n, p) for n, p in sorted(self.model.named_parameters()) if p.requires_grad]
        self.names = [n for n, _ in trainable]
        self.params = [p for _, p in trainable]
        self.shadow = [p.detach().clone() for p in self.params]
        self.steps = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- d * shadow + (1 - d) * weights, one fused kernel over all parameters."""
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.current_decay())
        self.steps += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights inside the block (for evaluation and saving); the live ones after it."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], live)

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shadow": [t.detach().cpu() for t in self.shadow], "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"EMA state is for parameters {state['names']}, the model trains {self.names}")
        self.shadow = [t.to(device=s.device, dtype=s.dtype) for t, s in zip(state["shadow"], self.shadow)]
        self.steps = int(state["steps"])
