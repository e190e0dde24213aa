"""Batch scoring throughput (users/s): the in-process engine and the Ray engine, on this machine or one GPU.

Models (``--models``), random weights, ids only (as the ``gpu-ids`` profile; what the context inputs
add is benchmarks/bench_context.py's measure):
``recipe`` is the shipped GPU recipe's size: lean encoder, d_model 512, 6 layers, 8 heads, d_ff
2048, a 200-item window, 384-d item vectors plus id embeddings, the history logit; ``tiny`` is the
same with d_model 32, 1 layer, d_ff 64, so its rate is what everything but the model costs per
user (reading, id mapping, the 200-event history mask, top-k, writing): the ceiling one scoring
process reaches however fast its model runs. 3,416 items (ML-1m after 5-core). Users are synthetic: `--events` raw item ids each (200 by default: the window is
full and the history mask covers every event), drawn from a Zipf-like popularity, in one
Parquet file of ``user_id, history`` that both engines read. k = 20, 512 users per batch.

Each engine scores two sizes (``--users N1 N2``); each run is a whole job (read, load the
model, score, write Parquet), so ``(N2 - N1) / (t2 - t1)`` is the per-user rate without the
fixed cost (model load; for Ray also the actors' start), and ``t1 - N1 / rate`` that fixed cost.
The local Ray is started once beforehand (a cluster is up already when a job is submitted);
its start time is reported apart. The two engines' top-k are compared user by user.

This machine (the whole stack installed; Ray: 2 single-threaded actors, in-process: torch's
default threads):

    .venv/bin/python benchmarks/bench_score.py --models recipe tiny --out docs/runs/score-cpu.json  # ~13 min, 2 vCPUs
    .venv/bin/python benchmarks/bench_score.py --quick --out /tmp/score.json       # smoke test

One GPU, where only torch, numpy, pandas and pyarrow are installed (``--lean``: imports
``lite_rec.infer`` and ``lite_rec.model`` only; the in-process engine is the scorer's loop over
the same ``Recommender``, and the Ray engine runs when Ray and the rest of the stack import,
else the output says what is missing):

    python3 benchmarks/bench_score.py --lean --device cuda --models recipe tiny --users 20000 40000 \
        --tiny-users 20000 40000 --out score-gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lite_rec.core.model_config import ModelConfig  # noqa: E402
from lite_rec.infer.bundle import load_bundle, save_bundle  # noqa: E402
from lite_rec.infer.fast_path import FastPathOptions, fast_recommender  # noqa: E402
from lite_rec.model.rec_llm import build_model  # noqa: E402

STACK = ("pydantic", "duckdb", "prefect", "mlflow")  # what a GPU box lacks; --lean never imports them


SIZES = {"recipe": {"d_model": 512, "n_layers": 6, "n_heads": 8, "d_ff": 2048},
         "tiny": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}}


def build_bundle(out: Path, model: str, items: int, item_dim: int, window: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="lean", pretrained=False, **SIZES[model], dropout=0.0, backbone_dropout=0.0,
                      max_seq_len=window, item_repr="text+id", history_logit=True)
    vectors = torch.randn(items + 1, item_dim) * 0.5
    vectors[0] = 0
    model, _ = build_model(cfg, items, vectors, causal=False)
    with torch.no_grad():
        model.history_logit_param.fill_(-1.0)
    ids = [str(1000 + i) for i in range(1, items + 1)]
    return save_bundle(
        out, spec=model.spec.to_dict(), model_config=cfg, state_dict=model.state_dict(), dataset="bench",
        items=pd.DataFrame({"item_idx": range(1, items + 1), "item_id": ids, "title": [f"Item {i}" for i in ids]}),
        popularity=pd.DataFrame({"item_idx": range(1, items + 1), "count": np.arange(items, 0, -1)}), overwrite=True,
    )


def write_histories(path: Path, users: int, events: int, items: int, seed: int = 1) -> Path:
    """``user_id, history``: `events` raw ids per user from a Zipf-like popularity (a^-0.8)."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    draws = rng.choice(items, size=(users, events), p=weights / weights.sum()) + 1001
    table = pa.table({"user_id": pa.array([f"u{u}" for u in range(users)], pa.string()),
                      "history": pa.array([[str(i) for i in row] for row in draws.tolist()], pa.list_(pa.string()))})
    pq.write_table(table, path, row_group_size=1024)
    return path


def inprocess_full(bundle: Path, histories: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``lite_rec.serve.scoring.score_users``: the engine `lite-rec score` runs by default."""
    from lite_rec.serve.scoring import score_users

    result = score_users(bundle, histories, out, k=args.k, device=args.device, batch_size=args.batch_size,
                         progress=False, options=FastPathOptions())
    return {"seconds": result.seconds, "rows": result.rows}


def inprocess_lean(bundle: Path, histories: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The in-process scorer's loop without the stack it imports (pydantic): read the Parquet, one
    fast-path ``Recommender``, ``recommend`` per batch of users, rows to a Parquet writer."""
    started = time.perf_counter()
    frame = pd.read_parquet(histories)
    rec = fast_recommender(load_bundle(bundle), args.device, FastPathOptions())
    users, hists = frame["user_id"].tolist(), [list(h) for h in frame["history"].tolist()]
    schema = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float64())])
    rows = 0
    with pq.ParquetWriter(out, schema) as writer:
        for start in range(0, len(users), args.batch_size):
            batch = rec.recommend(hists[start:start + args.batch_size], args.k, True, ignore_unknown=True)
            counts = [len(r) for r in batch]
            table = pa.table({"user_id": np.repeat(np.asarray(users[start:start + args.batch_size], dtype=object), counts).tolist(),
                              "rank": np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in counts]),
                              "item_id": [i for r in batch for i in r.item_ids],
                              "score": [s for r in batch for s in r.scores]}, schema=schema)
            writer.write_table(table)
            rows += table.num_rows
    return {"seconds": time.perf_counter() - started, "rows": rows}


def ray_engine(bundle: Path, histories: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``lite_rec.serve.ray_scoring.score_users_ray`` against the local Ray started in main()."""
    from lite_rec.serve.ray_scoring import score_users_ray

    result = score_users_ray(bundle, histories, out, k=args.k, device=args.device, batch_size=args.batch_size,
                             progress=False)
    return {"seconds": result.seconds, "rows": result.rows}


def ray_missing() -> str | None:
    """Why the Ray engine cannot run here (None: it can)."""
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError as exc:
        return f"ray missing ({exc})"
    missing = [m for m in STACK[:1] if not _importable(m)]  # the actors run lite_rec.serve.scoring (pydantic)
    return f"ray present, but {', '.join(missing)} missing (the Ray actors run lite_rec.serve.scoring)" if missing else None


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def agreement(a: Path, b: Path) -> dict[str, float]:
    """Users whose top-k items (in order) are the same in both outputs, and the largest score gap."""
    x, y = pd.read_parquet(a), pd.read_parquet(b)
    lists_x = x.groupby("user_id", sort=True)["item_id"].agg(list)
    lists_y = y.groupby("user_id", sort=True)["item_id"].agg(list)
    same = float((lists_x == lists_y.reindex(lists_x.index)).mean())
    merged = x.merge(y, on=["user_id", "rank"], suffixes=("_a", "_b"))
    return {"same_topk_users": same, "max_score_diff": float((merged["score_a"] - merged["score_b"]).abs().max()),
            "rows_a": len(x), "rows_b": len(y)}


def marginal(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Per-user rate and fixed cost from the two sizes of one engine."""
    if len(runs) < 2 or runs[1]["seconds"] <= runs[0]["seconds"]:
        return None
    rate = (runs[1]["users"] - runs[0]["users"]) / (runs[1]["seconds"] - runs[0]["seconds"])
    return {"users_per_s": rate, "fixed_seconds": runs[0]["seconds"] - runs[0]["users"] / rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["recipe"], choices=sorted(SIZES))
    parser.add_argument("--users", type=int, nargs="+", default=[300, 600], help="job sizes (two: per-user rate and fixed cost)")
    parser.add_argument("--tiny-users", type=int, nargs="+", default=[2000, 4000], help="job sizes of the tiny model")
    parser.add_argument("--events", type=int, default=200, help="history length of every user")
    parser.add_argument("--items", type=int, default=3416)
    parser.add_argument("--window", type=int, default=200, help="model.max_seq_len")
    parser.add_argument("-k", "--k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512, help="users per forward pass (serve.score_batch_size)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--engines", nargs="+", default=["inprocess", "ray"], choices=["inprocess", "ray"])
    parser.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--lean", action="store_true", help="no pydantic/duckdb/prefect/mlflow: a GPU box (see above)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 and 80 users, 20 events, window 20")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.tiny_users, args.events, args.window = [40, 80], [40, 80], 20, 20
    if args.lean:  # prove it where the stack is installed: what a GPU box lacks is never imported
        import importlib.util

        for name in STACK:
            if name not in sys.modules and importlib.util.find_spec(name) is not None:
                sys.modules[name] = None  # type: ignore[assignment]  # import fails as if absent

    started = time.monotonic()
    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_avg_before": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "runs": [], "skipped": {},
    }
    engines = {"inprocess": inprocess_lean if args.lean else inprocess_full, "ray": ray_engine}
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        root = Path(tmp)
        outputs: dict[tuple[str, str, int], Path] = {}
        ray = None
        if "ray" in args.engines:
            why = ray_missing() if args.lean else None
            if why:
                report["skipped"]["ray"] = why
                print(f"ray engine skipped: {why}", flush=True)
            else:
                import ray

                t0 = time.perf_counter()
                ray.init(num_cpus=args.ray_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING")
                report["ray"] = {"version": ray.__version__, "init_seconds": time.perf_counter() - t0,
                                 "resources": ray.cluster_resources()}
        try:
            for model in args.models:
                bundle = build_bundle(root / f"bundle-{model}", model, args.items, 384, args.window)
                for users in args.tiny_users if model == "tiny" else args.users:
                    histories = write_histories(root / f"histories-{users}.parquet", users, args.events, args.items)
                    for engine in args.engines:
                        if engine in report["skipped"]:
                            continue
                        out = root / f"{model}-{engine}-{users}.parquet"
                        result = engines[engine](bundle, histories, out, args)
                        run = {"model": model, "engine": engine, "users": users, **result,
                               "users_per_s": users / result["seconds"]}
                        report["runs"].append(run)
                        outputs[(model, engine, users)] = out
                        print(json.dumps(run), flush=True)
                    if (model, "inprocess", users) in outputs and (model, "ray", users) in outputs:
                        report.setdefault("agreement", {})[f"{model}/{users}"] = agreement(
                            outputs[(model, "inprocess", users)], outputs[(model, "ray", users)])
        finally:
            if ray is not None:
                ray.shutdown()
    report["marginal"] = {f"{m}/{e}": marginal([r for r in report["runs"] if r["engine"] == e and r["model"] == m])
                          for m in args.models for e in args.engines if e not in report["skipped"]}
    report["machine"]["load_avg_after"] = os.getloadavg()
    report["wall_seconds"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({"marginal": report["marginal"], "agreement": report.get("agreement"), "skipped": report["skipped"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
