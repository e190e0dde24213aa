"""The shipped model's scoring step on this machine's CPU: torch (the fast path) beside ONNX Runtime (the export).

The model: the ``model`` section of ``--profile`` (default ``gpu``, configs/profiles/gpu.yaml) as
training resolves it for ML-1m (``lite_rec.core.config.build_config("ml-1m", profile=...)``), built
as ``benchmarks/bench_serve_suite.py`` builds it (its ``profile_config`` and ``build_models``,
imported from there): for ``gpu`` a lean encoder (d_model 512, 6 layers, 8 heads, d_ff 2048),
causal, 200-item windows, ``pooling: last``, ``item_repr: text+id`` over 384-d item vectors,
``history_logit``, and what each history event says besides its item: its gap to the previous event
and its rating (``time_gaps``, ``ratings``), attention biased by the time between events
(``time_bias``) and the gap to the request's time read with a one-hour floor (``query_time``,
``query_gap_floor: 3600``). ``--profile gpu-ids`` gives the same architecture reading item ids
alone. 3,416 items, random weights (the backbone's a random T5's mapped into the lean layout), and
random nonzero context tables (N(0, 0.5), padding rows zero; training starts them at zero or near
it), so that the top-20 comparison below also checks the context path. Saved as a bundle and
exported with ``lite_rec.infer.onnx_export`` (top-20 in the graph). The report's ``model`` names the
profile, the request fields the model reads (``context_fields``: ``ts``, ``rating``,
``request_time`` for ``gpu``; none for ``gpu-ids``) and holds its settings.

Requests are ML-1m users at their real history lengths (``--sequences``: each user's training
items + the validation item, the history a test-time request carries, capped at the window; a
synthetic long tail if the file is absent); the lengths alone are read. Each user's items are drawn
at random, with increasing synthetic Unix times (gaps log-uniform from 1 s to 30 days), ratings 1-5
and a request time an hour after the last event, and their context rows (B, T, 3) int64 (context
id, time, next-gap index: ``lite_rec.model.context``) are built as serving builds a request's
(``history_contexts``, as ``Recommender.prepare``; ``right_padded``, as ``Recommender.score_indices``:
bench_serve_suite's ``synthetic_users``). A request's items and contexts are right-padded to its
longest history, and both engines get the same arrays; building the context rows is not timed.

One request = the scoring step with the top-20, the input items masked: for torch
``FastModel(items, contexts=contexts)`` as ``Recommender`` calls it (the lean plan in fp32: top
layer at the last position only, the batch cut to its longest history; an ids-only model gets no
contexts) + mask + ``topk``; for ONNX Runtime one ``session.run`` of the exported graph (same
function, same padding) fed ``items`` and, where the export's sidecar lists it (a model that reads
contexts), ``contexts``. 1 user and 32 users per request, torch and ORT at 1 and 2 intra-op
threads, the configurations taking turns in rounds (so a busy moment of the machine does not fall on
one of them alone); p50 and p99 per request. The top-20 of both are compared on every request
(``topk_identical_share``, ``topk_overlap``). Beside the wall time of each request, its CPU time
(``time.process_time``, all threads of this process): on a machine that other jobs share, the CPU
time of a 1-thread configuration is what the request costs a core of its own. ONNX Runtime's
intra-op threads sleep between runs (``session.intra_op.allow_spinning=0``; its default spin-waits,
which on 2 cores took a core from the configuration timed next and counted in its CPU time).

    .venv/bin/python benchmarks/bench_serve_cpu.py --out docs/runs/serve-cpu-onnx.json      # ~8 min on 2 idle cores
    .venv/bin/python benchmarks/bench_serve_cpu.py --by-length --out docs/runs/serve-cpu-onnx.json  # + cost by length
    .venv/bin/python benchmarks/bench_serve_cpu.py --profile gpu-ids --out docs/runs/serve-cpu-onnx-ids.json  # ids only
    .venv/bin/python benchmarks/bench_serve_cpu.py --quick --out /tmp/cpu.json             # smoke test
    .venv/bin/python benchmarks/bench_serve_cpu.py --quick --profile gpu-ids --out /tmp/cpu-ids.json

Needs onnxruntime and the exporter's onnx/onnxscript besides what bench_serve_suite needs
(transformers for the random T5 weights, pydantic and pyyaml for the profile).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from bench_serve_suite import (  # noqa: E402 - the model and its inputs, built as the GPU suite builds them
    CONTEXT_TABLE_STD,
    DATASET,
    build_models,
    host_request,
    overlap,
    profile_config,
    synthetic_users,
)

from lite_rec.core.config import ConfigError  # noqa: E402
from lite_rec.infer.bundle import load_bundle, save_bundle  # noqa: E402
from lite_rec.infer.fast_path import FastModel  # noqa: E402
from lite_rec.infer.onnx_export import export_onnx  # noqa: E402
from lite_rec.model.context import context_fields  # noqa: E402
from lite_rec.model.rec_llm import LiteRecModel  # noqa: E402
from lite_rec.model.spec import ModelConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Request:
    """One scoring request as both engines take it: the same arrays (the ORT feeds are views of the tensors)."""

    items: torch.Tensor  # (B, T) int64 item_idx, right-padded with 0 to the request's longest history
    contexts: torch.Tensor | None  # (B, T, C) int64 context rows, zero rows where padding; None for an ids-only model
    feeds: dict[str, np.ndarray]  # ONNX Runtime's inputs by the graph's names: "items"[, "contexts"]


def build_bundle(out: Path, args: argparse.Namespace, config: ModelConfig, causal: bool) -> LiteRecModel:
    """The profile's model as bench_serve_suite builds it (random weights, random context tables),
    saved as a bundle at `out`, the way the export reads a trained model."""
    model = build_models(args, config, causal, torch.device("cpu"))["lean"]
    ids = [str(i) for i in range(1, args.items + 1)]
    save_bundle(out, spec=model.spec, state_dict=model.state_dict(), dataset="ml-1m-random",
                items=pd.DataFrame({"item_idx": range(1, args.items + 1), "item_id": ids, "title": ids}),
                popularity=pd.DataFrame({"item_idx": range(1, args.items + 1), "count": np.arange(args.items, 0, -1)}))
    return model


def user_lengths(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """(U,) history lengths at test time (training items + the validation item), capped at the window."""
    if args.sequences.exists():
        seqs = pd.read_parquet(args.sequences, columns=["train_seq"])
        lengths, source = (seqs["train_seq"].map(len) + 1).to_numpy(np.int64), str(args.sequences)
    else:
        rng = np.random.default_rng(0)
        lengths = np.clip(np.exp(rng.normal(np.log(95), 1.0, 6040)), 17, 3000).astype(np.int64)
        source = "synthetic (log-normal, median 95)"
    return np.minimum(lengths, args.window), source


def make_request(config: ModelConfig, lengths: np.ndarray, n_items: int, input_names: list[str],
                 seed: tuple[int, ...]) -> Request:
    """One request of ``len(lengths)`` synthetic users with these history lengths, right-padded to the longest:
    items and (for a context model) context rows built as serving builds them (``synthetic_users``)."""
    packed = synthetic_users(config, lengths, int(lengths.max()), n_items, seed)  # (B, T) or (B, T, 1 + C)
    items, contexts = host_request(packed)  # (B, T), (B, T, C) | None, each contiguous on the host
    arrays = {"items": items.numpy(), "contexts": None if contexts is None else contexts.numpy()}
    return Request(items, contexts, {name: arrays[name] for name in input_names})


def requests(config: ModelConfig, lengths: np.ndarray, users: int, count: int, n_items: int, input_names: list[str],
             seed: int) -> list[Request]:
    """`count` requests of `users` users each, their lengths drawn from the real ones."""
    rng = np.random.default_rng(seed)
    return [make_request(config, lengths[rng.integers(0, len(lengths), users)], n_items, input_names, seed=(seed, i))
            for i in range(count)]


def torch_top_items(fast: FastModel, request: Request, k: int) -> np.ndarray:
    """(B, k) item_idx: ``FastModel`` called as ``Recommender.score_indices`` calls its model, the input items masked, top-k."""
    with torch.inference_mode():
        logits = fast(request.items, contexts=request.contexts)[0].scatter(1, request.items, float("-inf"))  # (B, N+1)
        return torch.topk(logits, k, dim=1).indices.numpy()


def ort_top_items(session: object, request: Request) -> np.ndarray:
    """(B, k) item_idx: one run of the exported graph (it masks the input items itself)."""
    return session.run(["top_items"], request.feeds)[0]  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", default="gpu",
                   help="the shipped profile whose model is measured (configs/profiles/<name>.yaml): gpu (per-event context), "
                        "gpu-ids (item ids only)")
    p.add_argument("--sequences", type=Path, default=REPO / "data" / "processed" / "ml-1m" / "sequences.parquet")
    p.add_argument("--items", type=int, default=3416)
    p.add_argument("--item-dim", type=int, default=384)
    p.add_argument("--window", type=int, help="the model window (default: the profile's model.max_seq_len)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--single", type=int, default=80, help="1-user requests per configuration")
    p.add_argument("--batched", type=int, default=8, help="32-user requests per configuration")
    p.add_argument("--rounds", type=int, default=4, help="the configurations take turns this many times")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--by-length", type=int, nargs="*", metavar="L",
                   help="only the cost of one user by history length (e.g. 20 50 100 150 200), 1 thread, added to --out")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    try:
        config, causal = profile_config(args.profile, args.quick)  # with --quick: small layers
    except ConfigError as exc:  # an unknown profile names the shipped ones
        p.error(str(exc))
    if args.quick:
        args.items, args.item_dim, args.window, args.single, args.batched, args.rounds = 300, 24, 48, 8, 2, 2
    args.window = args.window or config.max_seq_len
    config = dataclasses.replace(config, max_seq_len=args.window)
    import onnxruntime as ort

    fields = context_fields(config)
    architecture = {name: getattr(config, name) for name in ("d_model", "n_layers", "n_heads", "d_ff")}
    report: dict = {"machine": {"cpus": os.cpu_count(), "cpu": _cpu_name(), "python": platform.python_version(),
                                "torch": torch.__version__, "onnxruntime": ort.__version__,
                                "load_average_at_start": os.getloadavg()},
                    "config": {k: str(v) for k, v in vars(args).items()},
                    "model": {"profile": args.profile,
                              "profile_source": f"configs/{DATASET}.yaml + configs/profiles/{args.profile}.yaml",
                              "context_fields": fields, "context_features": config.context_features,
                              "context_tables": (f"random N(0, {CONTEXT_TABLE_STD}), padding rows 0"
                                                 if config.uses_context else None),
                              "architecture": architecture, "causal": causal, "window": args.window, "items": args.items,
                              "model_settings": config.to_dict()}}
    print(f"profile {args.profile}: {architecture}, window {args.window}, context fields {fields or 'none'}", flush=True)
    lengths, source = user_lengths(args)
    report["lengths"] = {"source": source, "users": len(lengths), "median": float(np.median(lengths)),
                         "mean": float(lengths.mean()), "share_at_window": float((lengths == args.window).mean())}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        bundle_dir, onnx_path = Path(tmp) / "bundle", Path(tmp) / "model.onnx"
        model = build_bundle(bundle_dir, args, config, causal)
        started = time.monotonic()
        sidecar = export_onnx(load_bundle(bundle_dir), onnx_path, top_k=args.k)
        report["export_s"] = time.monotonic() - started
        input_names = [entry["name"] for entry in sidecar["inputs"]]  # "items"[, "contexts"]: what the graph is fed
        if ("contexts" in input_names) != config.uses_context:
            raise RuntimeError(f"the export's inputs {input_names} do not match the model (context fields {fields})")
        report["model"]["onnx_inputs"] = input_names
        fast = FastModel(model, "cpu")
        if args.by_length is not None:
            return by_length(args, config, fast, onnx_path, input_names, ort, report)
        sessions = {}
        for n in args.threads:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = n, 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            # its worker threads sleep between runs, as torch's do: spinning ones would take a core from
            # the configuration timed next on 2 cores, and count in its CPU time
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[n] = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        per = {1: max(args.single // args.rounds, 1), 32: max(args.batched // args.rounds, 1)}
        work = {users: requests(config, lengths, users, per[users] * args.rounds, args.items, input_names, seed=users)
                for users in (1, 32)}

        def step(engine: str, n: int, request: Request) -> np.ndarray:
            """(B, k) top item_idx of one request by one configuration."""
            return torch_top_items(fast, request, args.k) if engine == "torch" else ort_top_items(sessions[n], request)

        configs = {f"{engine}_t{n}": (engine, n) for engine in ("torch", "onnxruntime") for n in args.threads}
        times: dict[tuple[str, int], list[float]] = {(c, u): [] for c in configs for u in (1, 32)}
        cpu: dict[tuple[str, int], list[float]] = {(c, u): [] for c in configs for u in (1, 32)}
        identical: dict[int, list[bool]] = {1: [], 32: []}  # per request: the two engines' top-k equal, in order
        overlaps: dict[int, list[float]] = {1: [], 32: []}  # per request: share of torch's top-k in ORT's
        for name, (engine, n) in configs.items():  # warm-up: first calls allocate
            torch.set_num_threads(n)
            for request in work[1][:2] + work[32][:1]:
                step(engine, n, request)
        for rnd in range(args.rounds):
            for name, (engine, n) in configs.items():
                torch.set_num_threads(n)
                for users in (1, 32):
                    for request in work[users][rnd * per[users] : (rnd + 1) * per[users]]:
                        t, c = time.perf_counter(), time.process_time()
                        got = step(engine, n, request)  # (B, k)
                        times[(name, users)].append((time.perf_counter() - t) * 1000)
                        cpu[(name, users)].append((time.process_time() - c) * 1000)
                        if engine == "onnxruntime" and n == args.threads[0]:  # every request once, untimed
                            ref = torch_top_items(fast, request, args.k)  # (B, k)
                            identical[users].append(bool(np.array_equal(got, ref)))
                            overlaps[users].append(overlap(torch.from_numpy(ref), torch.from_numpy(got)))
            print(f"round {rnd + 1}/{args.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for (name, users), ms in times.items():
        spent = cpu[(name, users)]
        rows.append({"config": name, "users": users, "requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(np.mean(ms)), "min_ms": float(np.min(ms)),
                     "ms_per_user": float(np.percentile(ms, 50)) / users,
                     "cpu_p50_ms": float(np.percentile(spent, 50)), "cpu_p99_ms": float(np.percentile(spent, 99))})
        print(f"{name:>16} {users:>2} user(s): p50 {rows[-1]['p50_ms']:8.1f} ms  p99 {rows[-1]['p99_ms']:8.1f} ms  "
              f"(CPU time p50 {rows[-1]['cpu_p50_ms']:8.1f} ms)", flush=True)
    report["results"] = rows
    report["topk_identical_share"] = {str(u): float(np.mean(a)) if a else None for u, a in identical.items()}
    report["topk_overlap"] = {str(u): float(np.mean(a)) if a else None for u, a in overlaps.items()}
    best = min((r for r in rows if r["users"] == 1), key=lambda r: r["p50_ms"])
    report["verdict"] = {"best_1_user": best["config"], "best_1_user_p50_ms": best["p50_ms"], "target_ms": 60.0,
                         "met": best["p50_ms"] <= 60.0}
    report["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["verdict"]), f"top-{args.k} identical: {report['topk_identical_share']}, "
          f"overlap: {report['topk_overlap']}")
    return 0


def by_length(args: argparse.Namespace, config: ModelConfig, fast: FastModel, onnx_path: Path, input_names: list[str],
              ort: object, report: dict) -> int:
    """One user at fixed history lengths (with their context rows), torch and ONNX Runtime at 1 thread, taking
    turns: p50 and min of wall and CPU time (the min: the closest this shared machine came to an idle core)."""
    torch.set_num_threads(1)
    opts = ort.SessionOptions()  # type: ignore[attr-defined]
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    rows = []
    for length in args.by_length or [20, 50, 100, 150, 200]:
        request = make_request(config, np.array([min(length, args.window)]), args.items, input_names, seed=(4, length))
        steps = {"torch_t1": lambda: torch_top_items(fast, request, args.k),
                 "onnxruntime_t1": lambda: ort_top_items(session, request)}
        wall: dict[str, list[float]] = {k: [] for k in steps}
        spent: dict[str, list[float]] = {k: [] for k in steps}
        for name, step in steps.items():
            step()
        for _ in range(args.single // 4 or 2):
            for name, step in steps.items():
                t, c = time.perf_counter(), time.process_time()
                step()
                wall[name].append((time.perf_counter() - t) * 1000)
                spent[name].append((time.process_time() - c) * 1000)
        for name in steps:
            rows.append({"config": name, "length": length, "p50_ms": float(np.median(wall[name])),
                         "min_ms": float(min(wall[name])), "cpu_p50_ms": float(np.median(spent[name])),
                         "cpu_min_ms": float(min(spent[name])), "reps": len(wall[name])})
            print(f"L={length:<4} {name:>15}: p50 {rows[-1]['p50_ms']:7.1f} ms, min {rows[-1]['min_ms']:7.1f} ms, "
                  f"CPU p50 {rows[-1]['cpu_p50_ms']:7.1f} ms", flush=True)
    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    saved["by_length"] = {"machine": {**report["machine"], "load_average_at_end": os.getloadavg()}, "model": report["model"],
                          "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(saved, indent=2))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
