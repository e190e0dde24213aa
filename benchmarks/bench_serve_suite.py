"""Serving at the shipped window on one GPU, in one run: the step, every ML-1m user, a profile, the generative baseline.

The model the ``gpu`` profile ships (configs/profiles/gpu.yaml): a lean T5-small-sized encoder
(d_model 512, 6 layers, 8 heads, d_ff 2048), causal (one-pass training), 200-item windows,
``pooling: last``, ``item_repr: text+id`` (384-d item vectors through the adapter plus an id
embedding), ``history_logit``; 3,416 items (ML-1m after 5-core), top-20, random weights. An HF
``T5EncoderModel`` with the same weights computes the same function (``load_t5_weights_into_lean``).

Sections, each written to ``--out`` as soon as it is done (a run cut short keeps what it measured):

1. ``step``: one scoring step (forward + head + top-20) at full windows, L = 200 and L = 20,
   B = 1, 32, 1024. ms per step = p50 of CUDA-event times over >= 50 back-to-back steps (inputs
   rotated over 4 batches), after warm-up; ``latency_p50_ms``: one synchronous step on the host
   clock. Plans: ``hf_eager_fp32`` (transformers, eager fp32), ``lean_eager_fp32`` (our model,
   eager fp32: the reference of every top-k overlap), ``prev_triton_graph`` / ``prev_sdpa_graph``
   (the plan before this work, ``LeanRunner(previous=True)``: every layer at every position, a
   per-row mask, the one-tile Triton kernel or SDPA, bf16, one CUDA graph), ``new_plan_graph``
   (``LeanRunner`` now, ``attention="auto"``: the top layer at the last position only, one causal
   mask for the batch, the one-tile Triton kernel up to 64 items and the flash-style one above,
   residuals in place, bf16, one CUDA graph), ``new_flash_graph`` / ``new_sdpa_graph`` (the same
   with the flash-style kernel at every length / with SDPA's fused kernels) and ``fast_model``
   (what the service and batch scoring run: ``FastModel`` fed from the host, i.e. the length
   bucket read on the host, the copy to the GPU and into the graph's input, the graph, a copy
   out, top-k).
2. ``all_users``: every user at their own history length (``--lengths``: a .npy of the 6,040 ML-1m
   lengths; a synthetic long-tailed default otherwise), capped at the window, end to end: users
   sorted by length, one chunk per length bucket (at most 1,024 users), ``FastModel`` forward,
   history mask, top-20, ids back on the host. p50 of wall time over 5 passes; top-20 overlap
   with the fp32 eager model.
3. ``profile``: torch.profiler of the new plan (the same ops, not graphed) at B = 1, 32 and 1,024,
   L = 200: the kernels by GPU time per step.
4. ``generative``: ``bench_generative`` (a P5-style T5-small encoder-decoder spelling item ids,
   beam search with 20 beams constrained to valid ids, by HF's ``prefix_allowed_tokens_fn`` and
   by a tensor mask) at L = 20 and 200, the same batches, with a vocabulary of digits and
   separators (128 tokens) and with T5's own (32,128, as P5), and its ratio to our step.

    python3 benchmarks/bench_serve_suite.py --lengths ml1m-history-lengths.npy --out serve.json   # one H100, ~5 min
    python3 benchmarks/bench_serve_suite.py --quick --device cpu --out /tmp/suite.json          # smoke test, < 60 s
    python3 benchmarks/bench_serve_suite.py --write-lengths data/processed/ml-1m/sequences.parquet out.npy

Needs torch, transformers, numpy (and pandas + pyarrow for ``--write-lengths``); imports
``lite_rec.model`` and ``lite_rec.infer``'s torch-only modules, nothing that needs pydantic or onnx.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_generative import run_generative  # noqa: E402

from lite_rec.infer.fast_path import FastModel, FastPathOptions, GraphedStep, bucket_for  # noqa: E402
from lite_rec.infer.lean_runner import LeanRunner  # noqa: E402
from lite_rec.model.backbone import BackboneSpec, build_from_spec, load_t5_weights_into_lean  # noqa: E402
from lite_rec.model.rec_llm import LiteRecModel  # noqa: E402
from lite_rec.model.spec import ModelConfig, ModelSpec  # noqa: E402

STARTED = time.monotonic()
SHIPPED = {"d_model": 512, "n_layers": 6, "n_heads": 8, "d_ff": 2048}
QUICK = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128}
TARGETS = {"step_ms_b32_l200": 0.6, "step_ms_b1024_l200": 16.0, "step_ms_b1_l200": 0.25, "all_users_s": 0.15,
           "generative_ratio": 500.0}
Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


# ---------------------------------------------------------------------------------------------
# Models and steps


def build_models(args: argparse.Namespace, device: torch.device) -> dict[str, LiteRecModel]:
    """The shipped architecture twice with identical weights: an HF T5 encoder and the lean encoder."""
    torch.manual_seed(0)
    sizes = QUICK if args.quick else SHIPPED
    vectors = torch.randn(args.items + 1, args.item_dim) * 0.5
    vectors[0] = 0
    hf = build_from_spec(BackboneSpec("t5", **sizes, dropout=0.0))
    lean = build_from_spec(BackboneSpec("lean", **sizes, dropout=0.0))
    load_t5_weights_into_lean(lean, hf.hf.state_dict())  # type: ignore[union-attr]
    models: dict[str, LiteRecModel] = {}
    for name, backbone in (("hf", hf), ("lean", lean)):
        config = ModelConfig(backbone="t5-small" if name == "hf" else "lean", pretrained=False, **sizes, dropout=0.0,
                             backbone_dropout=0.0, item_repr="text+id", max_seq_len=args.window, pooling="last",
                             history_logit=True)
        spec = ModelSpec(n_items=args.items, item_dim=args.item_dim, causal=True,
                         backbone=BackboneSpec("t5" if name == "hf" else "lean", **sizes, dropout=0.0), config=config)
        models[name] = LiteRecModel(spec, backbone, vectors)
    shared = {k: v for k, v in models["hf"].state_dict().items() if not k.startswith("backbone.")}
    models["lean"].load_state_dict(shared, strict=False)  # same item table, id embedding, adapter and head
    return {k: m.to(device).eval() for k, m in models.items()}


def make_step(model: Callable[[torch.Tensor], object], k: int) -> Step:
    """items (B, T) -> (top-k scores (B, k), top-k item_idx (B, k)): the whole scoring step."""

    def step(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(items)
        logits = out[0] if isinstance(out, tuple) else out  # (B, N+1) fp32
        return torch.topk(logits, k, dim=1)

    return step


def sdpa_backend(name: str | None):  # noqa: ANN201 - a context manager
    """Force one SDPA backend while a graph is built and captured (the choice is baked into the graph)."""
    if name is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name)])


def plans(args: argparse.Namespace, device: torch.device, models: dict[str, LiteRecModel], batch: int, length: int,
          example: torch.Tensor) -> list[tuple[str, Callable[[], Step]]]:
    """(name, builder) of every plan measured at one (batch, length); built lazily, one at a time.
    ``fast_model`` is fed from the host, as the service feeds it (the copy to the GPU is in its time)."""
    lean = models["lean"]
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    attention = "auto" if cuda else "sdpa"

    def runner(**kw: object) -> LeanRunner:
        return LeanRunner(lean, dtype, fused_relu=cuda, **kw)  # type: ignore[arg-type]

    def graphed(build: Callable[[], LeanRunner], backend: str | None = None) -> Callable[[], Step]:
        def make() -> Step:
            with sdpa_backend(backend):
                step = make_step(build(), args.k)
                return GraphedStep(step, example) if cuda else step  # type: ignore[return-value]
        return make

    out: list[tuple[str, Callable[[], Step]]] = [
        ("hf_eager_fp32", lambda: make_step(models["hf"], args.k)),
        ("lean_eager_fp32", lambda: make_step(lean, args.k)),
        ("prev_triton_graph", graphed(lambda: runner(attention="triton" if cuda else "sdpa", previous=True))),
        ("prev_sdpa_graph", graphed(lambda: runner(attention="sdpa", previous=True))),
        ("new_plan_graph", graphed(lambda: runner(attention=attention))),
    ]
    if cuda:
        out += [("new_flash_graph", graphed(lambda: runner(attention="flash"))),
                ("new_sdpa_graph", graphed(lambda: runner(attention="sdpa")))]
    out.append(("fast_model", lambda: make_step(FastModel(lean, device, FastPathOptions(
        batch_buckets=(batch,), length_buckets=(length,))), args.k)))
    if length != args.window:  # the short window: the baselines and the new path only
        out = [p for p in out if p[0] in ("hf_eager_fp32", "lean_eager_fp32", "prev_triton_graph", "new_plan_graph", "fast_model")]
    return [p for p in out if not args.only or p[0] in args.only]


def time_step(fn: Step, inputs: list[torch.Tensor], reps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """p50 (p10, p90) ms of back-to-back steps by CUDA events (wall clock on a CPU), and the p50 of
    one synchronous step on the host clock."""
    with torch.inference_mode():
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for i, (start, end) in enumerate(events):
                start.record()
                fn(inputs[i % len(inputs)])
                end.record()
            torch.cuda.synchronize(device)
            ms = sorted(s.elapsed_time(e) for s, e in events)
        lat = []
        for i in range(max(reps // 5, 3) if cuda else reps):
            t = time.perf_counter()
            fn(inputs[i % len(inputs)])
            if cuda:
                torch.cuda.synchronize(device)
            lat.append((time.perf_counter() - t) * 1000)
    ms = ms if cuda else sorted(lat)
    return {"p50_ms": statistics.median(ms), "p10_ms": ms[len(ms) // 10], "p90_ms": ms[(9 * len(ms)) // 10],
            "reps": len(ms), "latency_p50_ms": statistics.median(lat)}


def overlap(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Mean share of the reference's top-k item ids found in the other top-k, per user."""
    ref, got = ref.cpu(), got.cpu()
    same = (ref[:, :, None] == got[:, None, :]).any(-1).float()  # (B, k)
    return round(float(same.mean()), 4)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def step_section(args: argparse.Namespace, device: torch.device, models: dict[str, LiteRecModel]) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    rows: list[dict] = []
    for length in args.lengths_measured:
        for batch in args.batches:
            inputs = [torch.randint(1, args.items + 1, (batch, length), generator=gen).to(device) for _ in range(4)]
            with torch.inference_mode():
                ref = make_step(models["lean"], args.k)(inputs[0])[1]
            host = [x.cpu() for x in inputs]
            for name, build in plans(args, device, models, batch, length, inputs[0]):
                row: dict = {"plan": name, "length": length, "batch": batch}
                if time.monotonic() - STARTED > args.budget_s * 0.45 and "eager" in name and batch > 32:
                    rows.append({**row, "error": "skipped: time budget"})
                    continue
                try:
                    fn = build()
                    reps = args.reps if "eager" not in name or batch <= 32 else max(args.reps // 5, 10)
                    feed = host if name == "fast_model" else inputs
                    timing = time_step(fn, feed, reps, args.warmup, device)
                    with torch.inference_mode():
                        got = fn(feed[0])[1].clone()
                except Exception as exc:  # noqa: BLE001 - report the plan as failed, measure the rest
                    rows.append({**row, "error": f"{type(exc).__name__}: {exc}"[:1500]})
                    print(f"{name:>20} L={length:<4} B={batch:<5} FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                    _free(device)
                    continue
                rows.append({**row, **timing, "users_per_s": batch / timing["p50_ms"] * 1000, "topk_overlap": overlap(ref, got)})
                print(f"{name:>20} L={length:<4} B={batch:<5} {timing['p50_ms']:9.3f} ms (latency {timing['latency_p50_ms']:8.3f})"
                      f"  {rows[-1]['users_per_s']:>12,.0f} users/s  top-{args.k} overlap {rows[-1]['topk_overlap']:.4f}", flush=True)
                del fn
                _free(device)
    return rows


# ---------------------------------------------------------------------------------------------
# Every user at their own length


def user_lengths(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    """The users' history lengths, capped at the window: the --lengths file, or a synthetic long tail."""
    if args.user_lengths is not None:
        lengths = np.load(args.user_lengths).astype(np.int64)
        source = str(args.user_lengths)
    else:  # log-normal around ML-1m's median (95 items), from 17: the share at the 200 cap is ML-1m's ~26%
        rng = np.random.default_rng(0)
        lengths = np.clip(np.exp(rng.normal(np.log(95), 1.0, 6040)), 17, 3000).astype(np.int64)
        source = "synthetic (log-normal, median 95, min 17)"
    if args.quick:
        lengths = lengths[: args.quick_users]
    return np.minimum(lengths, args.window), source


def score_all(model: Callable[[torch.Tensor], object], items: torch.Tensor, order: np.ndarray, chunks: list[tuple[int, int]],
              k: int) -> torch.Tensor:
    """Top-k item_idx (U, k) of every user, on the host: chunks of users sorted by length, the
    history masked (the service's exclude_history), one top-k per chunk."""
    out = torch.empty(items.shape[0], k, dtype=torch.long, device=items.device)
    with torch.inference_mode():
        for lo, hi in chunks:
            idx = torch.as_tensor(order[lo:hi], device=items.device)
            rows = items[idx]  # (b, L) right-padded
            out_ = model(rows)
            logits = out_[0] if isinstance(out_, tuple) else out_
            logits = logits.scatter(1, rows, float("-inf"))  # the history (column 0 is -inf already)
            out[idx] = torch.topk(logits, k, dim=1).indices
    return out.cpu()


def all_users_section(args: argparse.Namespace, device: torch.device, models: dict[str, LiteRecModel]) -> dict:
    lengths, source = user_lengths(args)
    n = len(lengths)
    gen = torch.Generator().manual_seed(2)
    items = torch.zeros(n, args.window, dtype=torch.long)
    for u, length in enumerate(lengths.tolist()):
        items[u, :length] = torch.randint(1, args.items + 1, (length,), generator=gen)
    items = items.to(device)
    order = np.argsort(lengths, kind="stable")
    report: dict = {"users": n, "lengths_source": source, "mean_length": float(lengths.mean()),
                    "median_length": float(np.median(lengths)), "share_at_window": float((lengths == args.window).mean()),
                    "plans": {}}
    ref = score_all(models["lean"], items, order, [(i, min(i + 256, n)) for i in range(0, n, 256)], args.k)
    cuda = device.type == "cuda"
    configs = {
        # the service before: Triton attention over full layers, its config's length buckets, chunks of 128
        "prev_fast_model": FastPathOptions(cuda_attention="triton" if cuda else "sdpa", last_only=False,
                                           length_buckets=(5, 10, 20), batch_buckets=(1, 8, 32, 128)),
        "new_fast_model": FastPathOptions(batch_buckets=args.user_batches),
    }
    for name, options in configs.items():
        if args.only and name not in args.only:
            continue
        try:
            built = time.monotonic()
            fast = FastModel(models["lean"], device, options)
            build_s = time.monotonic() - built
            top = max(options.batch_buckets) if cuda else 256
            chunks, start = [], 0
            buckets = np.array([bucket_for(int(x), fast.length_buckets) for x in lengths[order]])
            for i in range(1, n + 1):  # one chunk per length bucket, at most `top` users
                if i == n or buckets[i] != buckets[start] or i - start == top:
                    chunks.append((start, i))
                    start = i
            got = score_all(fast, items, order, chunks, args.k)  # warm-up
            times = []
            for _ in range(args.user_reps):
                t = time.perf_counter()
                score_all(fast, items, order, chunks, args.k)
                times.append(time.perf_counter() - t)
            p50 = statistics.median(times)
            report["plans"][name] = {"p50_s": p50, "min_s": min(times), "passes": len(times), "users_per_s": n / p50,
                                     "chunks": len(chunks), "graphs": len(fast.graph_shapes), "build_and_capture_s": build_s,
                                     "length_buckets": list(fast.length_buckets), "topk_overlap": overlap(ref, got)}
            print(f"all {n} users, {name}: {p50 * 1000:.1f} ms ({n / p50:,.0f} users/s), {len(chunks)} chunks, "
                  f"top-{args.k} overlap {report['plans'][name]['topk_overlap']:.4f}", flush=True)
            del fast
        except Exception as exc:  # noqa: BLE001
            report["plans"][name] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
            print(f"all users, {name}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        _free(device)
    return report


# ---------------------------------------------------------------------------------------------
# Profile and the generative baseline


def profile_section(args: argparse.Namespace, device: torch.device, models: dict[str, LiteRecModel]) -> dict:
    """Kernels of the new plan by GPU time per step (the graphed step replays these same kernels)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    runner = LeanRunner(models["lean"], torch.bfloat16 if cuda else torch.float32, fused_relu=cuda,
                        attention="auto" if cuda else "sdpa")
    step = make_step(runner, args.k)
    out: dict = {}
    steps = 10
    for batch in args.profile_batches:
        items = torch.randint(1, args.items + 1, (batch, args.window), device=device)
        with torch.inference_mode():
            for _ in range(3):
                step(items)
            _free(device)
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    step(items)
                _free(device)
        events = prof.key_averages()
        kind = "CUDA" if cuda else "CPU"
        kernels = [e for e in events if e.device_type.name == kind and (not cuda or e.self_device_time_total > 0)]

        def self_us(e: object) -> float:
            return float(e.self_device_time_total if cuda else e.self_cpu_time_total)  # type: ignore[attr-defined]

        total = sum(self_us(e) for e in kernels) / steps
        top = sorted(kernels, key=self_us, reverse=True)[:15]
        out[f"b{batch}"] = {"kernel_ms_per_step": total / 1000, "kernels_per_step": sum(e.count for e in kernels) / steps,
                            "top": [{"name": e.key[:120], "ms_per_step": self_us(e) / steps / 1000,
                                     "calls_per_step": e.count / steps, "share": self_us(e) / steps / total if total else 0.0}
                                    for e in top]}
        print(f"profile B={batch}: {total / 1000:.3f} ms of kernels per step; top: "
              + "; ".join(f"{t['name'][:50]} {t['ms_per_step']:.3f}" for t in out[f'b{batch}']['top'][:5]), flush=True)
    return out


def generative_section(args: argparse.Namespace, device: torch.device, steps: list[dict]) -> dict:
    """The generative baseline at each vocabulary (the first: item ids spelled in digits, the
    cheapest decoding; T5's own 32,128 tokens as P5 decodes), and its ratio to our step."""
    deadline = STARTED + args.budget_s - 30
    ours = {(r["length"], r["batch"], r["plan"]): r["p50_ms"] for r in steps if "p50_ms" in r}
    out: dict = {"runs": {}, "ratios": []}
    for vocab in args.gen_vocabs:
        gen = run_generative(device, args.items, tuple(args.lengths_measured[::-1]), tuple(args.batches), k=args.k,
                             vocab=vocab, tiny=args.quick, deadline=deadline,
                             reps={b: (2 if args.quick else (10 if b == 1 else 5 if b <= 32 else 2)) for b in args.batches})
        out["runs"][f"vocab_{vocab}"] = gen
        for r in gen["rows"]:
            if "p50_ms" not in r:
                continue
            for plan in ("fast_model", "new_plan_graph"):
                mine = ours.get((r["length"], r["batch"], plan))
                if mine:
                    out["ratios"].append({"vocab": vocab, "constraint": r["constraint"], "length": r["length"], "batch": r["batch"],
                                          "ours": plan, "generative_ms": r["p50_ms"], "ours_ms": mine, "ratio": r["p50_ms"] / mine})
    return out


def verdict(report: dict) -> list[dict]:
    """One row per target of the issue: measured, target, met, and by how much it is missed."""
    steps = {(r["plan"], r["length"], r["batch"]): r for r in report.get("step", []) if "p50_ms" in r}
    window = report["config"]["window"]
    rows = []
    for batch, key in ((32, "step_ms_b32_l200"), (1024, "step_ms_b1024_l200"), (1, "step_ms_b1_l200")):
        for plan in ("new_plan_graph", "fast_model"):
            if (plan, window, batch) in steps:
                got = steps[(plan, window, batch)]["p50_ms"]
                rows.append({"target": key, "plan": plan, "measured": got, "goal": TARGETS[key], "met": got <= TARGETS[key],
                             "factor_over": got / TARGETS[key]})
    new = report.get("all_users", {}).get("plans", {}).get("new_fast_model", {})
    if "p50_s" in new:
        rows.append({"target": "all_users_s", "plan": "new_fast_model", "measured": new["p50_s"], "goal": TARGETS["all_users_s"],
                     "met": new["p50_s"] <= TARGETS["all_users_s"], "factor_over": new["p50_s"] / TARGETS["all_users_s"]})
    for r in report.get("generative", {}).get("ratios", []):
        if r["ours"] == "fast_model":
            rows.append({"target": "generative_ratio", "plan": f"fast_model vs {r['constraint']}, vocab {r['vocab']}", "length": r["length"],
                         "batch": r["batch"], "measured": r["ratio"], "goal": TARGETS["generative_ratio"],
                         "met": r["ratio"] >= TARGETS["generative_ratio"], "factor_over": TARGETS["generative_ratio"] / r["ratio"]})
    return rows


# ---------------------------------------------------------------------------------------------


def write_lengths(parquet: Path, out: Path) -> int:
    """Each user's history length at test time (training items + the validation item) as a .npy."""
    import pandas as pd

    seqs = pd.read_parquet(parquet, columns=["train_seq"])
    lengths = (seqs["train_seq"].map(len) + 1).to_numpy(np.int32)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, lengths)
    print(f"wrote {out}: {len(lengths)} users, median {np.median(lengths):.0f}, max {lengths.max()}")
    return 0


def _version(name: str) -> str:
    try:
        return __import__(name).__version__
    except ImportError:
        return "absent"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path)
    p.add_argument("--lengths", dest="user_lengths", type=Path, help=".npy of every user's history length (ML-1m: 6,040)")
    p.add_argument("--items", type=int, default=3416)
    p.add_argument("--item-dim", type=int, default=384)
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--short", type=int, default=20, help="the short window measured beside the shipped one")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 1024])
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--user-reps", type=int, default=5)
    p.add_argument("--gen-vocabs", type=int, nargs="+", default=[128, 32128],
                   help="generative baseline's vocabularies (128: ids spelled in digits; 32128: T5's own, as P5)")
    p.add_argument("--sections", nargs="+", default=["step", "all_users", "profile", "generative"])
    p.add_argument("--only", nargs="+", help="only these plans (names as printed)")
    p.add_argument("--budget-s", type=float, default=540, help="skip the slow parts when the run nears this")
    p.add_argument("--quick", action="store_true", help="smoke test: a small model, small batches, few reps")
    p.add_argument("--write-lengths", nargs=2, type=Path, metavar=("SEQUENCES_PARQUET", "OUT_NPY"))
    args = p.parse_args(argv)
    if args.write_lengths:
        return write_lengths(*args.write_lengths)
    if args.out is None:
        p.error("--out is required")
    if args.quick:
        args.items, args.item_dim, args.window, args.short = 300, 24, 48, 20
        args.batches, args.reps, args.warmup, args.user_reps, args.quick_users = [1, 4], 3, 1, 1, 40
        args.gen_vocabs = args.gen_vocabs[:1]
    args.lengths_measured = [args.window, args.short]
    args.user_batches = (1, 8, 32, 128, 1024) if not args.quick else (1, 8, 32)
    args.profile_batches = [1, 32, 1024] if not args.quick else [4]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("CUDA is not available here; use --device cpu --quick for a smoke test")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the eager references
        torch.backends.cudnn.allow_tf32 = False
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                    "torch": torch.__version__, "transformers": _version("transformers"), "python": platform.python_version(),
                    "config": {"quick": args.quick, "items": args.items, "item_dim": args.item_dim, "window": args.window,
                               "short": args.short, "k": args.k, "batches": args.batches, "reps": args.reps,
                               "architecture": QUICK if args.quick else SHIPPED, "causal": True, "pooling": "last",
                               "item_repr": "text+id", "dtype": "bf16 (head fp32)" if device.type == "cuda" else "fp32"},
                    "targets": TARGETS}
    models = build_models(args, device)

    def save() -> None:
        report["verdict"] = verdict(report)
        report["elapsed_s"] = time.monotonic() - STARTED
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))

    sections = {"step": lambda: step_section(args, device, models), "all_users": lambda: all_users_section(args, device, models),
                "profile": lambda: profile_section(args, device, models),
                "generative": lambda: generative_section(args, device, report.get("step", []))}
    for name in args.sections:
        print(f"== {name} ({time.monotonic() - STARTED:.0f} s)", flush=True)
        try:
            report[name] = sections[name]()
        except Exception as exc:  # noqa: BLE001 - keep the other sections
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"section {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
        save()
    for row in report["verdict"]:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
