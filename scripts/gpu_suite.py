"""Train and evaluate several model variants on one processed dataset, one after another.

Why a suite: GPU time comes in few, full calls, so one process trains every variant of the
results table (docs/results.md) and writes ``results.json`` after each one, so a call that runs
out of time still returns what finished. A SIGTERM (``timeout``'s signal) stops the running
variant and records it as ``interrupted`` with the epochs its last checkpoint holds, so a run cut
short still returns its validation curve (exit code 124, as ``timeout``'s own). Needs only
torch, transformers, pandas, pyarrow, safetensors, pydantic and pyyaml (no
duckdb/prefect/mlflow), like the GPU workers.

    python3 scripts/gpu_suite.py --processed-dir .carry/ml1m --item-vectors .carry/ml1m/vectors.safetensors \
        --out $OUT --profile paper \
        --variant "text-onepass: model.backbone=lean train.strategy=onepass model.max_seq_len=200" \
        --variant "id-onepass: model.item_repr=id train.strategy=onepass"
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.batches import read_sequences  # noqa: E402
from lite_rec.checkpoint import load_resume  # noqa: E402
from lite_rec.config import build_config  # noqa: E402
from lite_rec.popularity import evaluate_popularity  # noqa: E402
from lite_rec.train import read_item_vectors, train_model  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    return name.strip(), rest.split()


class Terminated(BaseException):
    """SIGTERM: not an Exception, so the per-variant ``except Exception`` does not swallow it."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processed-dir", type=Path, required=True)
    p.add_argument("--item-vectors", type=Path, required=True)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--profile", default="paper")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs-dir", type=Path, default=Path("/tmp/lite-rec-runs"))
    p.add_argument("--variant", action="append", required=True, help="'name: key=value key=value ...'")
    p.add_argument("--common", nargs="*", default=[], help="overrides applied to every variant")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the trainer's line per epoch
    args.out.mkdir(parents=True, exist_ok=True)
    sequences = read_sequences(args.processed_dir / "sequences.parquet")
    vectors = read_item_vectors(args.item_vectors)
    env = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
           "torch": torch.__version__, "users": len(sequences), "items": int(vectors.shape[0] - 1)}
    results: dict = {"env": env, "runs": {}}
    signal.signal(signal.SIGTERM, _terminate)

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))

    cfg0 = build_config(args.dataset, args.common, profile=args.profile)
    for masked in (True, False):
        m = evaluate_popularity(sequences, env["items"], ks=cfg0.eval.ks, exclude_history=masked, progress=False)
        results.setdefault("popularity", {})["masked" if masked else "unmasked"] = m
    for spec in args.variant:
        name, overrides = parse_variant(spec)
        cfg = build_config(args.dataset, [*args.common, *overrides], profile=args.profile)
        start = time.perf_counter()
        try:
            res = train_model(cfg, sequences, None if cfg.model.item_repr == "id" else vectors,
                              args.runs_dir / name, progress=False)
        except Terminated:
            saved = load_resume(args.runs_dir / name / "checkpoints")
            history = saved["state"]["history"] if saved else []
            results["runs"][name] = {"overrides": [*args.common, *overrides], "interrupted": True,
                                     "wall_seconds": time.perf_counter() - start, "history": history}
            save()
            print(f"{name}: INTERRUPTED after {len(history)} epochs (history in results.json)", flush=True)
            return 124
        except Exception as exc:  # keep the other variants going; the error is the result
            results["runs"][name] = {"overrides": overrides, "error": repr(exc)}
            print(f"{name}: FAILED {exc!r}", flush=True)
        else:
            wall = time.perf_counter() - start
            results["runs"][name] = {"overrides": [*args.common, *overrides], "profile": args.profile,
                                     "seed": cfg.train.seed, "wall_seconds": wall, "backbone_init": res.backbone_init,
                                     "stopped_early": res.stopped_early,
                                     "budget_exhausted": res.budget_exhausted, "metrics": res.metrics,
                                     "history": res.history}
            short = {k: round(v, 4) for k, v in res.metrics.items() if k.startswith("test_")}
            print(f"{name}: {wall:.0f}s {short}", flush=True)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
