"""The recommendation step on a GPU: Hugging Face T5 vs our lean encoder, eager fp32 vs the fast path.

One step = item vectors of a batch of users (B, 21) -> recommendation LLM (T5-small-sized: d_model
512, 6 layers, 8 heads, d_ff 2048) -> mean pooling -> projection head over 3,416 items -> top-20.
Random weights; the lean encoder gets the HF T5's weights (``load_t5_weights_into_lean``), so all
variants compute the same function and the script checks that they agree.

Variants, measured side by side in one run (CUDA events, warm-up, median of many iterations,
inputs rotated over several batches):
  hf_eager_fp32          transformers' T5EncoderModel, fp32, eager       (the paper reports 6.13 ms)
  lean_eager_fp32        lite_rec's SDPA encoder module, fp32, eager
  plan_eager_fp32        lite_rec.infer.lean_runner's re-planned step, fp32, eager
  hf_bf16_graph          HF T5 in bf16, whole step captured in one CUDA graph
  lean_bf16_graph        the lean module in bf16, one CUDA graph
  plan_bf16_graph        the re-planned step in bf16, one CUDA graph
  plan_from_hf_bf16_graph  the same plan built from the HF T5 model's weights (what t5-small bundles get)
  plan_fused_relu_bf16_graph  ... with ReLU as a cuBLASLt epilogue
  plan_bmm_bf16_graph    the plan with batched-matmul attention (bias fused into the score GEMM)
  plan_bmm_fused_relu_bf16_graph  both (the service's CUDA default before the Triton kernel)
  plan_triton_bf16_graph the plan with one Triton kernel per layer's attention (lite_rec.infer.triton_attention)
                         and the fused ReLU, one CUDA graph (needs CUDA and triton; what serve.cuda_attention=auto
                         runs; measured 0.29 ms at B=32 on an H100, target <= 0.35 ms)
  plan_fused_relu_cublaslt_graph  fused ReLU with cuBLASLt preferred for every GEMM
  plan_bf16_compile      the plan, torch.compile'd, then captured in a CUDA graph
  plan_bmm_fused_relu_compile  the service's plan, torch.compile'd, then captured
  plan_triton_compile    plan_triton_bf16_graph's plan, torch.compile'd (the Triton kernel kept as is), then captured
  plan_fused_relu_autotune  torch.compile max-autotune-no-cudagraphs (slow to build)
  lean_bf16_compile      the lean module's backbone, torch.compile'd, then captured
  serve_fast_path        what the service runs: FastModel (plan + graph per bucket) + eager top-k
and throughput at batch 1024 (target >= 250,000 users/s).

Runs where only torch, transformers, numpy, pandas and pyarrow are installed (imports lite_rec.model,
lite_rec.infer.fast_path and lean_runner, nothing that needs pydantic or mlflow). Smoke test on a CPU:
    python benchmarks/bench_serve_gpu.py --device cpu --quick --out /tmp/bench_gpu.json
On one H100 (~6.5 min; --no-compile or --only NAME... for less):
    python benchmarks/bench_serve_gpu.py --out bench_serve_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.infer.fast_path import FastModel, FastPathOptions, GraphedStep, cast_backbone  # noqa: E402
from lite_rec.infer.lean_runner import LeanRunner  # noqa: E402
from lite_rec.model.backbone import BackboneSpec, build_from_spec, load_t5_weights_into_lean  # noqa: E402
from lite_rec.model.rec_llm import LiteRecModel  # noqa: E402
from lite_rec.model.spec import ModelConfig, ModelSpec  # noqa: E402

T = TypeVar("T")
STARTED = time.monotonic()
TARGET_MS_B32 = 0.35
TARGET_USERS_PER_S = 250_000


def build_models(n_items: int, item_dim: int, seq_len: int, device: torch.device, seed: int = 0) -> dict[str, LiteRecModel]:
    """HF-T5 and lean recommendation models with identical weights (item table, encoder, head)."""
    torch.manual_seed(seed)
    sizes = {"d_model": 512, "n_layers": 6, "n_heads": 8, "d_ff": 2048}
    vectors = torch.randn(n_items + 1, item_dim) * 0.5
    vectors[0] = 0
    models: dict[str, LiteRecModel] = {}
    hf = build_from_spec(BackboneSpec("t5", **sizes, dropout=0.0))
    lean = build_from_spec(BackboneSpec("lean", **sizes, dropout=0.0))
    load_t5_weights_into_lean(lean, hf.hf.state_dict())  # type: ignore[union-attr]
    for name, backbone in (("hf", hf), ("lean", lean)):
        kind = "t5" if name == "hf" else "lean"
        config = ModelConfig(backbone="t5-small" if name == "hf" else "lean", pretrained=False, **sizes, dropout=0.0,
                             backbone_dropout=0.0, item_repr="text", max_seq_len=seq_len)
        spec = ModelSpec(n_items=n_items, item_dim=item_dim, causal=False, backbone=BackboneSpec(kind, **sizes, dropout=0.0),
                         config=config)
        models[name] = LiteRecModel(spec, backbone, vectors)
    shared = {k: v for k, v in models["hf"].state_dict().items() if not k.startswith("backbone.")}
    models["lean"].load_state_dict(shared, strict=False)  # same item table, adapter and head
    return {k: m.to(device).eval() for k, m in models.items()}


def make_step(model: torch.nn.Module, k: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """items (B, T) -> (top-k scores (B, k), top-k item_idx (B, k)): the whole serving step."""

    def step(items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(items)
        logits = out[0] if isinstance(out, tuple) else out  # (B, N+1) fp32
        return torch.topk(logits, k, dim=1)

    return step


def time_fn(fn: Callable[[torch.Tensor], object], inputs: list[torch.Tensor], iters: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median GPU time per call back to back (CUDA events) and median latency of one synchronous
    call (host clock); on CPU both are the host clock."""
    with torch.inference_mode():
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
            for i in range(iters):
                starts[i].record()
                fn(inputs[i % len(inputs)])
                ends[i].record()
            torch.cuda.synchronize(device)
            gpu = [s.elapsed_time(e) for s, e in zip(starts, ends)]
        lat = []
        for i in range(max(iters // 2, 3)):
            t = time.perf_counter()
            fn(inputs[i % len(inputs)])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            lat.append((time.perf_counter() - t) * 1000)
    if device.type != "cuda":
        gpu = lat
    gpu.sort()
    return {"median_ms": statistics.median(gpu), "p10_ms": gpu[len(gpu) // 10], "p90_ms": gpu[(9 * len(gpu)) // 10],
            "latency_median_ms": statistics.median(lat)}


def agreement(ref: tuple[torch.Tensor, torch.Tensor], got: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Mean top-k overlap and relative error of the top-k scores against the fp32 reference."""
    ref_idx, got_idx = ref[1].cpu(), got[1].cpu()
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(ref_idx, got_idx)) / ref_idx.numel()
    rel = float((got[0].float().cpu() - ref[0].float().cpu()).norm() / ref[0].float().cpu().norm())
    return {"topk_overlap": round(overlap, 4), "topk_score_rel_err": rel}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for the eager baselines
    models = build_models(args.items, args.item_dim, args.seq_len, device)
    gen = torch.Generator().manual_seed(1)
    results: list[dict] = []
    batches = args.batches
    for batch in batches:
        inputs = [torch.randint(1, args.items + 1, (batch, args.seq_len), generator=gen).to(device) for _ in range(args.rotate)]
        iters = args.iters if batch <= 64 else max(args.iters // 4, 5)
        with torch.inference_mode():
            refs = {name: make_step(m, args.k)(inputs[0]) for name, m in models.items()}
        builders: list[tuple[str, str, Callable[[], Callable[[torch.Tensor], object]]]] = [
            ("hf_eager_fp32", "hf", lambda: make_step(models["hf"], args.k)),
            ("lean_eager_fp32", "lean", lambda: make_step(models["lean"], args.k)),
            ("plan_eager_fp32", "lean", lambda: make_step(_plan(args, device, "lean", torch.float32), args.k)),
        ]
        if device.type == "cuda":
            builders += [
                ("hf_bf16_graph", "hf", lambda: GraphedStep(make_step(_bf16(args, device, "hf"), args.k), inputs[0])),
                ("lean_bf16_graph", "lean", lambda: GraphedStep(make_step(_bf16(args, device, "lean"), args.k), inputs[0])),
                ("plan_bf16_graph", "lean", lambda: GraphedStep(make_step(_plan(args, device, "lean"), args.k), inputs[0])),
                ("plan_from_hf_bf16_graph", "hf", lambda: GraphedStep(make_step(_plan(args, device, "hf"), args.k), inputs[0])),
                ("plan_fused_relu_bf16_graph", "lean", lambda: GraphedStep(make_step(_plan(args, device, "lean", fused_relu=True), args.k), inputs[0])),
                ("plan_bmm_bf16_graph", "lean", lambda: GraphedStep(make_step(_plan(args, device, "lean", attention="bmm"), args.k), inputs[0])),
                ("plan_bmm_fused_relu_bf16_graph", "lean", lambda: GraphedStep(make_step(
                    _plan(args, device, "lean", fused_relu=True, attention="bmm"), args.k), inputs[0])),
                ("serve_fast_path", "lean", lambda: make_step(FastModel(
                    build_models(args.items, args.item_dim, args.seq_len, device)["lean"], device,
                    FastPathOptions(batch_buckets=(batch,), length_buckets=(args.seq_len,))), args.k)),
            ]
            builders.append(("plan_fused_relu_cublaslt_graph", "lean", lambda: _with_blas("cublaslt", lambda: GraphedStep(
                make_step(_plan(args, device, "lean", fused_relu=True), args.k), inputs[0]))))
            if not args.no_compile:
                builders += [
                    ("plan_bf16_compile", "lean", lambda: GraphedStep(
                        make_step(torch.compile(_plan(args, device, "lean"), dynamic=False, mode=_mode(args)), args.k), inputs[0])),
                    ("lean_bf16_compile", "lean", lambda: GraphedStep(
                        make_step(_bf16(args, device, "lean", compile_mode=args.compile_mode), args.k), inputs[0])),
                    ("plan_bmm_fused_relu_compile", "lean", lambda: GraphedStep(make_step(torch.compile(
                        _plan(args, device, "lean", fused_relu=True, attention="bmm"), dynamic=False, mode=_mode(args)), args.k), inputs[0])),
                    ("plan_fused_relu_autotune", "lean", lambda: GraphedStep(make_step(torch.compile(
                        _plan(args, device, "lean", fused_relu=True), dynamic=False, mode="max-autotune-no-cudagraphs"), args.k), inputs[0])),
                ]
        triton = _triton_builders(args, device, inputs)
        if device.type == "cuda":
            builders += triton
        no_cuda = [] if device.type == "cuda" else [name for name, _, _ in triton if not args.only or name in args.only]
        for variant in no_cuda:
            results.append({"variant": variant, "batch": batch, "error": "skipped: needs CUDA (a Triton kernel in a CUDA graph)"})
            print(f"{variant:>20} B={batch:<5} skipped (needs CUDA: a Triton kernel in a CUDA graph)", flush=True)
        variants = []
        if args.only:
            builders = [b for b in builders if b[0] in args.only]
        for variant, family, build in builders:
            if ("compile" in variant or "autotune" in variant) and time.monotonic() - STARTED > args.budget_s - 150:
                results.append({"variant": variant, "batch": batch, "error": "skipped: time budget"})
                print(f"{variant:>20} B={batch:<5} skipped (time budget)", flush=True)
                continue
            try:
                variants.append((variant, family, build()))
            except Exception as exc:  # noqa: BLE001 - report the variant as failed, measure the rest
                results.append({"variant": variant, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                print(f"{variant:>20} B={batch:<5} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        for variant, family, fn in variants:
            timing = time_fn(fn, inputs, iters, args.warmup, device)
            with torch.inference_mode():
                got = fn(inputs[0])
                got = (got[0].clone(), got[1].clone())  # type: ignore[index]
            row = {"variant": variant, "batch": batch, **timing, "users_per_s": batch / timing["median_ms"] * 1000,
                   **agreement(refs[family], got)}
            if family == "lean":
                row["lean_vs_hf_overlap"] = agreement(refs["hf"], got)["topk_overlap"]
            results.append(row)
            print(f"{variant:>20} B={batch:<5} {timing['median_ms']:8.3f} ms  (latency {timing['latency_median_ms']:8.3f} ms)  "
                  f"{row['users_per_s']:>12,.0f} users/s  top-{args.k} overlap {row['topk_overlap']:.3f}", flush=True)
    fast_check = check_fast_path(args, device) if device.type == "cuda" else None
    if fast_check:
        print(f"fast path on ragged histories: {fast_check}", flush=True)
    return {"device": _device_name(device), "fast_path_check": fast_check, "torch": torch.__version__, "transformers": _version("transformers"),
            "python": platform.python_version(), "config": {k: v for k, v in vars(args).items() if k != "out"},
            "targets": {"lean_bf16_graph_ms_at_32": TARGET_MS_B32, "users_per_s_at_1024": TARGET_USERS_PER_S},
            "results": results, "verdict": _verdict(results)}


def _triton_builders(args: argparse.Namespace, device: torch.device, inputs: list[torch.Tensor]
                     ) -> list[tuple[str, str, Callable[[], Callable[[torch.Tensor], object]]]]:
    """The variants with the Triton attention kernel (and the fused ReLU). Built lazily like the rest:
    a missing triton package fails its variant with the import's message, not the run."""
    graphed = ("plan_triton_bf16_graph", "lean", lambda: GraphedStep(make_step(
        _plan(args, device, "lean", fused_relu=True, attention="triton"), args.k), inputs[0]))
    compiled = ("plan_triton_compile", "lean", lambda: GraphedStep(make_step(torch.compile(
        _plan(args, device, "lean", fused_relu=True, attention="triton"), dynamic=False, mode=_mode(args)), args.k), inputs[0]))
    return [graphed] if args.no_compile else [graphed, compiled]


def _bf16(args: argparse.Namespace, device: torch.device, family: str, compile_mode: str | None = None) -> LiteRecModel:
    """A fresh copy of the `family` model with its backbone in bf16 (optionally torch.compile'd)."""
    model = cast_backbone(build_models(args.items, args.item_dim, args.seq_len, device)[family], torch.bfloat16)
    if compile_mode is not None:
        model.backbone = torch.compile(model.backbone, dynamic=False, mode=None if compile_mode == "default" else compile_mode)  # type: ignore[assignment]
    return model


def _plan(args: argparse.Namespace, device: torch.device, family: str, dtype: torch.dtype = torch.bfloat16, fused_relu: bool = False,
          attention: str = "sdpa") -> LeanRunner:
    """The re-planned step (lite_rec.infer.lean_runner), from the `family` model's weights."""
    return LeanRunner(build_models(args.items, args.item_dim, args.seq_len, device)[family], dtype, fused_relu=fused_relu, attention=attention)


def _with_blas(library: str, build: Callable[[], T]) -> T:
    """Build (and capture) with another BLAS backend preferred; the graph keeps the kernels it captured."""
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        return build()
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def _mode(args: argparse.Namespace) -> str | None:
    return None if args.compile_mode == "default" else args.compile_mode


def profile_plan(args: argparse.Namespace, device: torch.device) -> None:
    """Kernel-level profile of one eager bf16 plan step per batch size (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    runner = _plan(args, device, "lean", fused_relu=args.fused_relu, attention=args.attention)
    step = make_step(runner, args.k)
    for batch in args.batches:
        items = torch.randint(1, args.items + 1, (batch, args.seq_len), device=device)
        with torch.inference_mode():
            for _ in range(5):
                step(items)
            torch.cuda.synchronize(device)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    step(items)
                torch.cuda.synchronize(device)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90)
        kernels = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA") / 10
        print(f"== profile B={batch}: {kernels:.0f} kernels per step\n{table}", flush=True)


def check_fast_path(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """The service's FastModel on ragged histories (lengths 1..T, batch padded up to a bucket)
    against the fp32 eager model on the full right-padded window: same top-k up to bf16 ties."""
    ref = build_models(args.items, args.item_dim, args.seq_len, device)["lean"]
    fast = FastModel(build_models(args.items, args.item_dim, args.seq_len, device)["lean"], device,
                     FastPathOptions(batch_buckets=(1, 8, 32), length_buckets=(5, 10, args.seq_len)))
    gen = torch.Generator().manual_seed(5)
    overlaps = []
    for batch in (1, 5, 13, 32, 70):  # 70 > the largest bucket: replayed in chunks
        items = torch.zeros(batch, args.seq_len, dtype=torch.long)
        lengths = torch.randint(1, args.seq_len + 1, (batch,), generator=gen)
        for b, n in enumerate(lengths.tolist()):
            items[b, :n] = torch.randint(1, args.items + 1, (n,), generator=gen)
        items = items.to(device)
        with torch.inference_mode():
            want = make_step(ref, args.k)(items)
            got = make_step(fast, args.k)(items)
        overlaps.append(agreement(want, got)["topk_overlap"])
    return {"graph_shapes": fast.graph_shapes, "graph_error": fast.graph_error, "bf16": fast.bf16, "attention": fast.attention,
            "topk_overlap_per_batch": overlaps}


def _verdict(results: list[dict]) -> dict[str, object]:
    ok = [r for r in results if "error" not in r]
    fast = ("bf16" in r["variant"] or r["variant"] == "serve_fast_path" for r in ok)
    best32 = [r["median_ms"] for r, f in zip(ok, fast) if f and r["batch"] == 32]
    best1024 = [r["users_per_s"] for r in ok if r["batch"] == 1024 and ("bf16" in r["variant"] or r["variant"] == "serve_fast_path")]
    return {
        "best_optimised_ms_at_32": min(best32) if best32 else None,
        "meets_0.35ms": bool(best32) and min(best32) <= TARGET_MS_B32,
        "best_users_per_s_at_1024": max(best1024) if best1024 else None,
        "meets_250k_users_per_s": bool(best1024) and max(best1024) >= TARGET_USERS_PER_S,
    }


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def _version(name: str) -> str:
    try:
        return __import__(name).__version__
    except ImportError:
        return "absent"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True, help="JSON results")
    p.add_argument("--items", type=int, default=3416)
    p.add_argument("--item-dim", type=int, default=512, help="item vector width (512: T5-small item LLM)")
    p.add_argument("--seq-len", type=int, default=21, help="history vectors per user")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 1024])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--rotate", type=int, default=8, help="distinct input batches cycled through (defeats cache reuse)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--only", nargs="+", help="measure only these variants (names as printed)")
    p.add_argument("--budget-s", type=float, default=540, help="skip compile variants when less than ~150 s of this remain")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default, max-autotune-no-cudagraphs, ...)")
    p.add_argument("--quick", action="store_true", help="smoke test: batch 4, a few iterations")
    p.add_argument("--profile", action="store_true", help="only print a kernel profile of the bf16 plan step")
    p.add_argument("--fused-relu", action="store_true", help="with --profile: the cuBLASLt ReLU epilogue")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "bmm", "triton"], help="with --profile: the plan's attention")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.iters, args.warmup, args.rotate = [4], 3, 1, 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("CUDA is not available here; use --device cpu --quick for a smoke test")
    if args.profile:
        profile_plan(args, torch.device(args.device))
        return 0
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["verdict"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
