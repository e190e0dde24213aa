"""Cold-start evaluation: the newest items are removed from training and enter only as text at test time.

The protocol is ``lite_rec.eval.coldstart``'s (docs/results.md, "Cold-start (ML-1m)"). Two steps:

``prepare`` chooses the cold items of a processed folder (the last ``--fraction`` of the items by
first rating time) and writes the warm folder: a processed folder without them that
``python -m lite_rec.train.run`` trains on, plus the cold items' texts and item-LLM vectors and
every user's test case (``coldstart.json`` records the cut-off and the counts).

``evaluate`` scores every test case on three slices (target cold, target warm, all), masked full
ranking over warm + cold items: the two baselines that need no model (popularity of the warm
training data; text similarity of each item to the user's last 10 history items), and, given
``--run``, the trained model through the serving path: the run is bundled with the warm folder
(``lite_rec.train.export.bundle_run``), the cold items are added to the bundle's catalog with
``lite_rec.infer.catalog.extend_bundle`` (what ``lite-rec add-items`` does: text vector only, no
learned id part), and each test case goes to the in-process Recommender as events with the test
item's time as the request time. Needs only what a GPU training worker has: torch, transformers,
safetensors, numpy, pandas, pyarrow, pydantic, pyyaml (no duckdb, prefect, mlflow).

On one GPU (a model with the inductive head; it cannot be combined with the fine-tuning stage):
    python3 benchmarks/cold_start_eval.py prepare --processed-dir .carry/ml1m --out cold/ml1m
    python3 -m lite_rec.train.run --processed-dir cold/ml1m --item-vectors cold/ml1m/vectors.safetensors \\
        --out runs/cold-inductive --dataset ml-1m --profile gpu train.device=cuda train.compile=true \\
        model.head=inductive train.finetune_epochs=0 train.max_stage1_minutes=3
    python3 benchmarks/cold_start_eval.py evaluate --warm cold/ml1m --run runs/cold-inductive --device cuda \\
        --out cold_start.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.core.errors import LiteRecError  # noqa: E402
from lite_rec.eval.coldstart import (  # noqa: E402
    KS,
    SLICES,
    WarmSplit,
    cold_items,
    load_warm_split,
    popularity_ranks,
    slice_metrics,
    text_similarity_ranks,
    write_warm_split,
)

BASELINES = ("popularity", "text_similarity")


def requests(split: WarmSplit) -> tuple[list[list[dict]], list[int]]:
    """Each test case as the serving path gets it: its history events and the test item's time."""
    cases = split.cases
    rated = "history_rating" in cases.columns
    histories = []
    for u, (ids, ts) in enumerate(zip(cases["history_item_id"], cases["history_ts"], strict=True)):
        events = [{"item_id": i, "ts": int(t)} for i, t in zip(ids, ts, strict=True)]
        if rated:
            for event, r in zip(events, cases["history_rating"].iloc[u], strict=True):
                event["rating"] = float(r)
        histories.append(events)
    return histories, cases["target_ts"].astype(int).tolist()


def model_ranks(rec: object, split: WarmSplit, *, batch_size: int = 1024, top: int = max(KS)) -> np.ndarray:
    """(cases,) 0-based rank of each target in the Recommender's masked top-`top` (inf = below it)."""
    top = min(top, rec.k_limit)  # type: ignore[attr-defined]  # a tiny catalog caps k
    histories, times = requests(split)
    targets = split.cases["target_item_id"].astype(str).tolist()
    ranks: list[float] = []
    for lo in range(0, len(targets), batch_size):
        got = rec.recommend(histories[lo : lo + batch_size], top, exclude_history=True,  # type: ignore[attr-defined]
                            request_times=times[lo : lo + batch_size])
        for r, t in zip(got, targets[lo : lo + batch_size], strict=True):
            if r.fallback:
                raise LiteRecError("a test case got the popularity fallback; every case has a history")
            ranks.append(r.item_ids.index(t) if t in r.item_ids else math.inf)
    return np.asarray(ranks, dtype=np.float64)


def extended_recommender(run_dir: Path, split: WarmSplit, tmp: Path, *, device: str, eager: bool) -> object:
    """The run bundled with the warm folder, the cold items added as ``lite-rec add-items`` adds them."""
    from lite_rec.infer.bundle import load_bundle
    from lite_rec.infer.catalog import extend_bundle
    from lite_rec.infer.fast_path import FastPathOptions, fast_recommender
    from lite_rec.infer.recommender import Recommender
    from lite_rec.train.export import bundle_run

    dataset = f"{split.record['dataset']}-warm"
    warm = load_bundle(bundle_run(run_dir, split.path, tmp / "bundle", dataset=dataset))
    n_warm = warm.num_items
    path, change = extend_bundle(warm, split.cold[["item_id", "title"]], split.vectors[n_warm + 1 :], tmp / "extended",
                                 extra={"cold_start": {"cutoff": split.record["cutoff"], "cold_items": len(split.cold)}})
    bundle = load_bundle(path)
    if len(change.added) != len(split.cold) or bundle.items["item_id"].tolist() != split.catalog:
        raise LiteRecError(f"{path}: the extended catalog is not the warm items followed by the cold ones")
    if eager:
        import torch

        return Recommender(bundle, ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    return fast_recommender(bundle, device, FastPathOptions())


def evaluate(warm_dir: Path, run_dir: Path | None, *, device: str = "auto", eager: bool = False,
             batch_size: int = 1024) -> dict[str, object]:
    split = load_warm_split(warm_dir)
    cold = split.target_cold
    rec = split.record
    report: dict[str, object] = {
        "warm": str(warm_dir), "cutoff": rec["cutoff"], "cutoff_utc": rec["cutoff_utc"], "fraction": rec["fraction"],
        "items": {"warm": rec["n_warm_items"], "cold": rec["n_cold_items"]},
        "cases": {"cold": int(cold.sum()), "warm": int((~cold).sum()), "all": len(cold)},
        "protocol": "masked full ranking over warm + cold items; history = train + validation events without cold ones",
    }
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    for name, fn in (("popularity", popularity_ranks), ("text_similarity", text_similarity_ranks)):
        started = time.perf_counter()
        results[name] = slice_metrics(fn(split, batch_size=batch_size), cold)
        seconds[name] = round(time.perf_counter() - started, 2)
    if run_dir is not None:
        with tempfile.TemporaryDirectory(prefix="cold-start-eval-") as tmp:
            recommender = extended_recommender(run_dir, split, Path(tmp), device=device, eager=eager)
            started = time.perf_counter()
            results["model"] = slice_metrics(model_ranks(recommender, split, batch_size=batch_size), cold)
            seconds["model"] = round(time.perf_counter() - started, 2)
        report.update(run=str(run_dir), device=str(recommender.device), path="eager" if eager else "fast")  # type: ignore[attr-defined]
        offline = run_dir / "metrics.json"
        if offline.is_file():  # the run's own numbers: warm catalog only, the warm folder's leave-one-out split
            numbers = json.loads(offline.read_text(encoding="utf-8"))
            report["run_warm_only_metrics"] = {k: numbers[k] for k in ("valid_recall_10", "test_recall_10", "test_ndcg_10")
                                               if k in numbers}
    report["results"] = results
    report["seconds"] = seconds
    return report


def table(report: dict) -> str:
    lines = [f"{'':16s} " + "  ".join(f"{s + ' R@10':>10s} {s + ' N@10':>10s}" for s in SLICES)]
    for name, res in report["results"].items():
        lines.append(f"{name:16s} " + "  ".join(f"{res[s]['recall_10']:10.4f} {res[s]['ndcg_10']:10.4f}" for s in SLICES))
    cases = report["cases"]
    lines.append(f"cases: cold {cases['cold']}, warm {cases['warm']}, all {cases['all']}; cut-off {report['cutoff_utc']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    prep = steps.add_parser("prepare", help="choose the cold items and write the warm folder")
    prep.add_argument("--processed-dir", type=Path, required=True, help="processed folder (sequences.parquet, items.parquet)")
    prep.add_argument("--out", type=Path, required=True, help="the warm folder to write")
    prep.add_argument("--fraction", type=float, default=0.1, help="share of the items that are cold (the newest by first rating)")
    prep.add_argument("--item-vectors", type=Path, default=None,
                      help="the folder's item vectors (N+1, D) (default: <processed-dir>/vectors.safetensors)")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    ev = steps.add_parser("evaluate", help="score the test cases: the baselines, and a trained run (--run)")
    ev.add_argument("--warm", type=Path, required=True, help="the folder `prepare` wrote")
    ev.add_argument("--run", type=Path, default=None, help="a run trained on the warm folder (model.head=inductive)")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    ev.add_argument("--eager", action="store_true", help="the plain fp32 model instead of the service's fast path")
    ev.add_argument("--batch-size", type=int, default=1024, help="test cases per call")
    ev.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)
    try:
        if args.step == "prepare":
            started = time.perf_counter()
            record = write_warm_split(args.processed_dir, args.out, cold_items(args.processed_dir, args.fraction),
                                      item_vectors=args.item_vectors, overwrite=args.overwrite)
            summary = {k: v for k, v in record.items() if k not in ("cold_items", "dropped_from_training", "no_history")}
            summary.update(dropped_from_training=len(record["dropped_from_training"]), no_history=len(record["no_history"]),
                           seconds=round(time.perf_counter() - started, 2))
            print(json.dumps(summary, indent=2))
            return 0
        report = evaluate(args.warm, args.run, device=args.device, eager=args.eager, batch_size=args.batch_size)
    except LiteRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(table(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
