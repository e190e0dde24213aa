"""The command line shared by the scripts that score trained model folders on a processed dataset
(``scripts/ensemble_eval.py``, ``scripts/gap_breakdown.py``): one parser, so their flags and
defaults cannot drift apart. Torch only, no orchestration stack: the GPU workers run them."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def model_folders_parser(description: str, model_help: str) -> argparse.ArgumentParser:
    """``--processed-dir``, repeated ``--model`` folders, ``--out`` (a results JSON) and ``--device``
    (cuda when there is one)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--processed-dir", type=Path, required=True, help="holds sequences.parquet")
    p.add_argument("--model", type=Path, action="append", required=True,
                   help=f"a trained model folder (model.safetensors + model.json); {model_help}")
    p.add_argument("--out", type=Path, required=True, help="results JSON (written whole or not at all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p
