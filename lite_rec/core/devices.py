"""Turning a config's device string into a torch device, with one set of rules and messages.

Why one place: the trainer, the item encoder and the serving fast path all take ``auto | cpu |
cuda | cuda:N`` from config, and a typo or a CUDA-less machine must fail the same way in each,
naming the config field. Imports only torch (GPU workers run without the orchestration stack).
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str, *, field: str = "device", error: type[Exception] = ValueError) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else CPU; anything else must be a CPU or
    CUDA device that exists here. Failures raise `error` with a message naming `field`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error(f"{field}={name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise error(f"{field}={name!r}: only auto, cpu, cuda and cuda:N are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{field}={name!r} but CUDA is not available here; use auto or cpu")
    return device
