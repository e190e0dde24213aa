"""The test split scored through the serving path: every test user's events, the test item's time
as the request time, through the in-process Recommender (what the service, the pyfunc and batch
scoring answer with), and the same Recall/NDCG the offline evaluator reports.

Why: the numbers we quote come from the offline evaluator (``lite_rec.eval.evaluate``), which
reads ``sequences.parquet`` directly. A served model gets requests instead: each history item as
an event ``{"item_id", "ts", "rating"}`` and a ``request_time``. Here each test user's training and
validation items go in as such events, with ``request_time`` = the test item's timestamp (what the
offline evaluator's query time is), through ``lite_rec.infer.recommender.Recommender`` on the
fast path (bf16 + CUDA graphs on a GPU, as the service runs it; ``--eager`` for the plain fp32
model), and the test item's rank in the answer gives the metrics. Masked: the history is removed
from the ranking (``exclude_history``); unmasked: it is kept (with the model's history score).

A run folder (``python -m lite_rec.train.run --out DIR``: model.safetensors + model.json) is
bundled with the processed folder it was trained on (``lite_rec.train.export.bundle_run``: items,
popularity), so this needs only what a GPU training worker has: torch, transformers, safetensors,
numpy, pandas, pyarrow, pydantic, pyyaml (no duckdb, prefect, mlflow).

On one H100, three seeds of the shipped recipe, then this:
    for S in 42 1 2; do python3 -m lite_rec.train.run --processed-dir .carry/ml1m \\
        --item-vectors .carry/ml1m/vectors.safetensors --out runs/gpu-s$S --dataset ml-1m --profile gpu \\
        train.seed=$S train.device=cuda; done
    python3 benchmarks/serving_path_eval.py --processed-dir .carry/ml1m --device cuda \\
        --run runs/gpu-s42 --run runs/gpu-s1 --run runs/gpu-s2 --out serving_path_eval.json
On a CPU, a tiny run: ``--device cpu`` (tests/integration/test_context_serving.py runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.infer.bundle import load_bundle  # noqa: E402
from lite_rec.infer.fast_path import FastPathOptions, fast_recommender  # noqa: E402
from lite_rec.infer.recommender import Recommender  # noqa: E402
from lite_rec.train.export import bundle_run  # noqa: E402

KS = (10, 20)
SIDES = ("train_ts", "valid_ts", "test_ts", "train_rating", "valid_rating")


def split_requests(processed_dir: Path | str) -> tuple[list[list[dict]], list[int], list[str], list[str]]:
    """Every user's test request: the train + validation items as events (ids, times, ratings where the
    file has them), the test item's time as the request time; and the test item's id and the user id."""
    processed = Path(processed_dir)
    present = set(pq.read_schema(processed / "sequences.parquet").names)
    columns = ["user_idx", "user_id", "train_seq", "valid_item_idx", "test_item_idx", *(c for c in SIDES if c in present)]
    seqs = pd.read_parquet(processed / "sequences.parquet", columns=columns)
    seqs = seqs.sort_values("user_idx", kind="stable").reset_index(drop=True)  # the evaluator's user order
    items = pd.read_parquet(processed / "items.parquet", columns=["item_idx", "item_id"])
    id_of = np.empty(int(items["item_idx"].max()) + 1, dtype=object)
    id_of[items["item_idx"].to_numpy()] = items["item_id"].astype(str).to_numpy()
    timed, rated = {"train_ts", "valid_ts", "test_ts"} <= present, {"train_rating", "valid_rating"} <= present
    histories, times = [], []
    for row in seqs.itertuples(index=False):
        ids = id_of[np.append(np.asarray(row.train_seq, dtype=np.int64), row.valid_item_idx)].tolist()
        if not timed:
            histories.append(ids)
            times.append(None)
            continue
        ts = [*np.asarray(row.train_ts).tolist(), int(row.valid_ts)]
        events = [{"item_id": i, "ts": t} for i, t in zip(ids, ts, strict=True)]
        if rated:
            for event, r in zip(events, [*np.asarray(row.train_rating).tolist(), float(row.valid_rating)], strict=True):
                event["rating"] = r
        histories.append(events)
        times.append(int(row.test_ts))
    targets = id_of[seqs["test_item_idx"].to_numpy(np.int64)].tolist()
    return histories, times, targets, seqs["user_id"].astype(str).tolist()


def serving_metrics(rec: Recommender, histories: Sequence[Sequence[object]], request_times: Sequence[object],
                    targets: Sequence[str], *, ks: Sequence[int] = KS, batch_size: int = 1024) -> dict[str, float]:
    """``test_{masked,unmasked}_{recall,ndcg}_{k}`` of the targets' ranks in the Recommender's top-max(ks),
    in batches of `batch_size` users (the evaluator's batches: the same shapes, the same logits on CPU).
    NDCG@k is 1 / log2(rank + 2) when the target ranks in the top k, as ``lite_rec.eval.metrics`` has it."""
    top = max(ks)
    out: dict[str, float] = {}
    for name, exclude in (("masked", True), ("unmasked", False)):
        ranks = []
        for lo in range(0, len(targets), batch_size):
            got = rec.recommend(histories[lo : lo + batch_size], top, exclude_history=exclude,
                                request_times=list(request_times[lo : lo + batch_size]))
            ranks += [r.item_ids.index(t) if t in r.item_ids else math.inf for r, t in zip(got, targets[lo : lo + batch_size])]
        for k in ks:
            out[f"test_{name}_recall_{k}"] = sum(r < k for r in ranks) / len(ranks)
            out[f"test_{name}_ndcg_{k}"] = sum(1.0 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    out["test_users"] = float(len(targets))
    return out


def evaluate_run(run_dir: Path | str, processed_dir: Path | str, *, device: str = "auto", eager: bool = False,
                 batch_size: int = 1024, dataset: str | None = None) -> dict[str, object]:
    """One run folder scored through the serving path; with the offline evaluator's numbers of the run
    (its metrics.json) beside them when it has them."""
    run_dir, processed = Path(run_dir), Path(processed_dir)
    with tempfile.TemporaryDirectory(prefix="serving-path-eval-") as tmp:
        bundle = load_bundle(bundle_run(run_dir, processed, Path(tmp) / "bundle", dataset=dataset or processed.name))
    rec = Recommender(bundle, _device(device)) if eager else fast_recommender(bundle, device, FastPathOptions())
    histories, times, targets, _ = split_requests(processed)
    started = time.perf_counter()
    metrics = serving_metrics(rec, histories, times, targets, batch_size=batch_size)
    result: dict[str, object] = {"run": str(run_dir), "device": str(rec.device), "path": "eager" if eager else "fast",
                                 "context_fields": rec.context_fields, "seconds": round(time.perf_counter() - started, 2),
                                 "serving": metrics}
    offline = run_dir / "metrics.json"
    if offline.is_file():
        numbers = json.loads(offline.read_text(encoding="utf-8"))
        result["offline"] = {k: numbers[k] for k in metrics if k in numbers}
    return result


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def summarize(results: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each serving metric over the runs (std 0 for one run)."""
    keys = [k for k in results[0]["serving"] if k != "test_users"]  # type: ignore[union-attr]
    values = {k: [r["serving"][k] for r in results] for k in keys}  # type: ignore[index]
    return {"mean": {k: statistics.mean(v) for k, v in values.items()},
            "std": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, type=Path, help="a training run folder (repeatable)")
    parser.add_argument("--processed-dir", required=True, type=Path, help="sequences.parquet + items.parquet it trained on")
    parser.add_argument("--dataset", default=None, help="dataset name recorded in the bundle (default: the folder's name)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--eager", action="store_true", help="the plain fp32 model instead of the service's fast path")
    parser.add_argument("--batch-size", type=int, default=1024, help="users per Recommender call")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    results = [evaluate_run(run, args.processed_dir, device=args.device, eager=args.eager, batch_size=args.batch_size,
                            dataset=args.dataset) for run in args.run]
    report = {"runs": results, **summarize(results)}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    for name in ("masked", "unmasked"):
        mean, std = report["mean"], report["std"]
        print(f"{name:9s} R@10 {mean[f'test_{name}_recall_10']:.4f} ± {std[f'test_{name}_recall_10']:.4f}  "
              f"N@10 {mean[f'test_{name}_ndcg_10']:.4f} ± {std[f'test_{name}_ndcg_10']:.4f}  "
              f"R@20 {mean[f'test_{name}_recall_20']:.4f}  N@20 {mean[f'test_{name}_ndcg_20']:.4f}  ({len(results)} run(s))",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
