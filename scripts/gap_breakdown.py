"""Test accuracy of trained models split by how long after the user's last input the test item
came (the gap ``model.query_time`` reads at the last position), both ranking protocols.

Why: a model with ``model.query_time`` reads the time of the item it predicts (HSTU's request-time
convention, ``lite_rec/item_context.py``). On ML-1m 42% of the test items share their second with
the last input (a page of films rated at once) and 91% come within the hour; this shows which
users the query time helps, beside models that do not read it, so a reader can judge how much of
a gain is the same-second pages of this dataset. Needs only torch, pandas, pyarrow and
safetensors, like the GPU workers.

    python3 scripts/gap_breakdown.py --processed-dir .carry/ml1m \\
        --model /tmp/runs/q-seed42 --model /tmp/runs/t-seed42 --out $OUT/gap_breakdown.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.batches import QUERY_TIME_COLUMNS, read_sequences  # noqa: E402
from lite_rec.checkpoint import load_model, write_json  # noqa: E402
from lite_rec.errors import DataError  # noqa: E402
from lite_rec.eval_cli import model_folders_parser  # noqa: E402
from lite_rec.evaluate import build_eval_set, evaluate_scores, model_scorer  # noqa: E402
from lite_rec.model import LiteRecModel  # noqa: E402

# (name, lowest gap in seconds, first gap past the bucket or None): test item time - last input time
BUCKETS = (("same second", 0, 1), ("1-59 s", 1, 60), ("1-59 min", 60, 3_600), ("1 h or more", 3_600, None))


def gap_buckets(sequences: pd.DataFrame) -> dict[str, np.ndarray]:
    """Name -> (U,) bool: the users whose test item came that long after their last input (the
    validation item); "all" holds every user. Names the missing column of an older file."""
    missing = [c for c in (QUERY_TIME_COLUMNS["valid"], QUERY_TIME_COLUMNS["test"]) if c not in sequences.columns]
    if missing:
        raise DataError(f"sequences.parquet: no column(s) {', '.join(missing)}; re-run `lite-rec ingest <dataset>`")
    gap = sequences[QUERY_TIME_COLUMNS["test"]].to_numpy(np.int64) - sequences[QUERY_TIME_COLUMNS["valid"]].to_numpy(np.int64)
    out = {"all": np.ones(len(gap), dtype=bool)}
    for name, lo, hi in BUCKETS:
        out[name] = (gap >= lo) & (gap < (hi if hi is not None else np.iinfo(np.int64).max))
    return out


def breakdown(model: LiteRecModel, sequences: pd.DataFrame, device: str) -> dict[str, dict[str, float]]:
    """Bucket name -> the model's test metrics over that bucket's users (as its training run scores)."""
    spec = model.spec if model.spec.uses_context else None
    scorer = model_scorer(model.eval(), device=device)
    out = {}
    for name, users in gap_buckets(sequences).items():
        subset = sequences[users].reset_index(drop=True)
        if subset.empty:
            continue
        out[name] = evaluate_scores(scorer, build_eval_set(subset, "test", spec), max_len=model.spec.max_seq_len,
                                    device=device, progress=False, pass_history=model.spec.history_logit)
    return out


def main(argv: list[str] | None = None) -> int:
    args = model_folders_parser(__doc__.split("\n\n")[0], "repeat for each model").parse_args(argv)
    try:
        sequences = read_sequences(args.processed_dir / "sequences.parquet")
        buckets = gap_buckets(sequences)
        models = {str(d): load_model(d, args.device)[0] for d in args.model}
    except (DataError, OSError) as exc:  # a missing file, column or model folder: say which, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: dict = {"users": {name: int(users.sum()) for name, users in buckets.items()}, "device": args.device,
                     "models": {}}
    for name, model in models.items():
        start = time.perf_counter()
        try:
            per_bucket = breakdown(model, sequences, args.device)
        except DataError as exc:  # e.g. a test item dated before the user's last input
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 2
        results["models"][name] = {"spec": model.spec.context_features, "buckets": per_bucket,
                                   "seconds": time.perf_counter() - start}
        for bucket, metrics in per_bucket.items():
            print(f"{name} [{bucket}]: R@10 {metrics['test_masked_recall_10']:.4f} N@10 {metrics['test_masked_ndcg_10']:.4f} "
                  f"(masked, {int(metrics['test_users'])} users)", flush=True)
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
