"""A ``--model`` reference parsed: a registry alias, a pinned registry version or a bundle directory.

Why apart from :mod:`lite_rec.registry.versions`: parsing needs no registry, and a service that
serves a bundle directory never talks to one, so it should not import MLflow (a GPU host that
serves a copied bundle needs only the serving stack).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lite_rec.core.errors import ConfigError

LOCAL_VERSION = "local"  # the version reported for a bundle directory
_NAME = r"[^/@\s]+"


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``--model``: a registry alias, a pinned registry version, or a local bundle."""

    text: str
    name: str | None = None
    alias: str | None = None
    version: str | None = None
    path: Path | None = None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None

    @property
    def fixed_version(self) -> str | None:
        """The version this reference always means (``local`` for a bundle directory, the pinned
        number), found without a registry; None for an alias."""
        if self.path is not None:
            return LOCAL_VERSION
        return self.version


def parse_model_ref(text: str) -> ModelRef:
    """``models:/<name>@<alias>`` | ``models:/<name>/<version>`` | a bundle directory."""
    text = text.strip()
    if text.startswith("models:/"):
        rest = text.removeprefix("models:/")
        if m := re.fullmatch(rf"({_NAME})@({_NAME})", rest):
            return ModelRef(text, name=m[1], alias=m[2])
        if m := re.fullmatch(rf"({_NAME})/([0-9]+)", rest):
            return ModelRef(text, name=m[1], version=m[2])
        raise ConfigError(f"--model {text!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
    if not text:
        raise ConfigError("--model is empty: pass models:/<name>@<alias> or a bundle directory")
    return ModelRef(text, path=Path(text))
