"""What request-time context costs on the serving path: the shipped ``gpu`` model (each event's time
gap, rating and time bias, the request time) against the ids-only ``gpu-ids`` model, side by side
in one process on one device.

Both models are built from their profiles' ``model`` sections (configs/profiles/gpu.yaml and
gpu-ids.yaml: lean encoder, d_model 512, 6 layers, 8 heads, d_ff 2048, 200-item window, text+id
items, the history score), with random weights, 3,416 items of random 384-d item vectors, and
served as the service serves them: a bundle, ``fast_recommender`` (bf16, CUDA graphs per
(batch, length) bucket). Users are synthetic, each a full 200-event window (item ids, Unix times
with gaps drawn from seconds to weeks, ratings 1-5) and a request time one hour after the last
event.

Two measures per model and batch size (B = 1, 32, 1,024 users):

- ``step_ms``: the model step alone (``FastModel`` on tensors already on the device: items
  (B, 200) and, for the context model, their context rows (B, 200, 3); history score; top-20),
  p50 of CUDA-event times over back-to-back steps after warm-up;
- ``recommend_ms``: ``Recommender.recommend`` end to end from the request's Python objects
  (ids or events, parsing and checking every event, building the context rows on the host, the
  step, ids back), p50 of wall times. The ids-only model is timed with plain ids and with the
  same events (which it accepts and ignores).

Why: context must not slow the fast path noticeably. The model-side cost is a few embedding
gathers and an attention bias per layer; the host-side cost is reading every event.

    python3 benchmarks/bench_context.py --device cuda --out context.json     # one GPU, ~1 min
    python3 benchmarks/bench_context.py --device cuda --profile --out context.json   # + kernel profile, attention alone
    python3 benchmarks/bench_context.py --quick --device cpu --out /tmp/c.json   # smoke test (tests/unit/infer)

Needs torch, numpy, pandas, pyarrow, safetensors, pydantic, pyyaml (no duckdb, prefect, mlflow).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lite_rec.core.model_config import ModelConfig  # noqa: E402
from lite_rec.infer.bundle import load_bundle, save_bundle  # noqa: E402
from lite_rec.infer.fast_path import FastPathOptions, fast_recommender  # noqa: E402
from lite_rec.infer.recommender import Recommender  # noqa: E402
from lite_rec.model.rec_llm import build_model  # noqa: E402

QUICK = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 128}
TOP_K = 20


def profile_model(name: str, quick: bool) -> ModelConfig:
    """The ``model`` section of configs/profiles/<name>.yaml (smaller layers with --quick)."""
    section = yaml.safe_load((ROOT / "configs" / "profiles" / f"{name}.yaml").read_text(encoding="utf-8"))["model"]
    return ModelConfig(**{**section, "pretrained": False, **(QUICK if quick else {})})  # random weights: no download


def make_bundle(config: ModelConfig, vectors: torch.Tensor, out: Path) -> Path:
    """A servable bundle of a random-weight model with `config` over len(vectors) - 1 items."""
    n_items = vectors.shape[0] - 1
    torch.manual_seed(0)
    model, _ = build_model(config, n_items, vectors, causal=True)
    with torch.no_grad():  # training starts the context tables at zero: drawn here, so the overlap sees them
        for name in ("time_bias", "query_gap_embedding", "context_embedding"):
            table = getattr(model, name, None)
            if table is not None:
                table.weight.normal_(0.0, 0.5)
                if table.padding_idx is not None:
                    table.weight[table.padding_idx] = 0.0
    items = pd.DataFrame({"item_idx": np.arange(1, n_items + 1), "item_id": [str(i) for i in range(1, n_items + 1)],
                          "title": [f"item {i}" for i in range(1, n_items + 1)]})
    popularity = pd.DataFrame({"item_idx": np.arange(1, n_items + 1), "count": np.arange(n_items, 0, -1)})
    return save_bundle(out, spec=model.spec, state_dict=model.state_dict(), items=items, popularity=popularity,
                       dataset="synthetic")


def synthetic_users(n_users: int, window: int, n_items: int, seed: int = 0) -> tuple[list[list[dict]], list[list[str]], list[int]]:
    """`n_users` full windows: events (item_id, ts, rating), the same as plain ids, and request times."""
    rng = np.random.default_rng(seed)
    events, ids, request_times = [], [], []
    for _ in range(n_users):
        items = rng.choice(np.arange(1, n_items + 1), size=window, replace=False)
        gaps = np.exp(rng.uniform(0, np.log(30 * 86_400), size=window)).astype(np.int64)  # 1 s .. 30 days
        ts = 1_000_000_000 + np.cumsum(gaps)
        ratings = rng.integers(1, 6, size=window)
        events.append([{"item_id": str(i), "ts": int(t), "rating": int(r)} for i, t, r in zip(items, ts, ratings, strict=True)])
        ids.append([str(i) for i in items])
        request_times.append(int(ts[-1]) + 3_600)
    return events, ids, request_times


def p50_ms(fn, device: torch.device, iters: int, warmup: int, events: bool) -> float:  # noqa: ANN001
    """p50 of per-call times in ms after `warmup` calls: CUDA events around the call on a GPU when
    `events` (device time of the step), else the host clock (wall time of the whole call)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        if events and device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def step_fn(rec: Recommender, prepared: list, exclude_history: bool = True):  # noqa: ANN001, ANN201
    """The model step on device tensors built once from `prepared` requests: items (B, L), contexts
    (B, L, C) for a context model, history (B, L); -> top-20 (scores, item_idx)."""
    window = rec.spec.config.max_seq_len
    items = torch.zeros(len(prepared), window, dtype=torch.long)  # (B, L)
    for b, p in enumerate(prepared):
        items[b, : len(p.indices[-window:])] = torch.as_tensor(p.indices[-window:])
    kwargs = {}
    if rec.spec.config.uses_context:
        rows = torch.zeros(len(prepared), window, prepared[0].contexts.shape[1], dtype=torch.long)  # (B, L, C)
        for b, p in enumerate(prepared):
            rows[b, : len(p.contexts[-window:])] = torch.as_tensor(p.contexts[-window:])
        kwargs["contexts"] = rows.to(rec.device)
    items = items.to(rec.device)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        logits, _ = rec.model(items, history=items if not exclude_history else None, **kwargs)  # (B, N+1)
        if exclude_history:
            logits = logits.scatter(1, items, float("-inf"))
        return torch.topk(logits, TOP_K, dim=1)

    return run


def profile_steps(recs: dict, users: dict, batches: list[int], device: torch.device, steps: int = 10) -> dict:
    """torch.profiler of each model's plan (the runner the graphs capture, run eagerly): GPU time per
    step by kernel, the top 12, and per kind (GEMMs, attention, norms, the rest)."""
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    for profile_name, (fast, _) in recs.items():
        runner = fast.model.runner
        for b in batches:
            items, contexts = users[profile_name](b)
            with torch.inference_mode():
                for _ in range(3):
                    runner(items, contexts)
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(steps):
                        runner(items, contexts)
                    torch.cuda.synchronize()
            kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
            total = sum(e.self_device_time_total for e in kernels) / steps / 1000
            kinds: dict[str, float] = {}
            for e in kernels:
                kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + e.self_device_time_total / steps / 1000
            top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:12]
            out[f"{profile_name}/b{b}"] = {
                "kernel_ms_per_step": round(total, 4), "kernels_per_step": sum(e.count for e in kernels) / steps,
                "by_kind_ms": {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                "top": [{"name": e.key[:100], "ms_per_step": round(e.self_device_time_total / steps / 1000, 4),
                         "calls_per_step": e.count / steps} for e in top]}
            print(f"profile {profile_name} B={b}: {total:.3f} ms of kernels; {out[f'{profile_name}/b{b}']['by_kind_ms']}", flush=True)
    return out


def kernel_kind(name: str) -> str:
    """A CUDA kernel's name -> what it does, for the profile's split."""
    low = name.lower()
    if any(k in low for k in ("gemm", "sm90_xmma", "cutlass", "nvjet", "cublas")):
        return "gemm"
    if "_user_bias_kernel" in low:
        return "bias"  # each user's (B, H, T, T) attention bias, built once per step
    if "_embed_kernel" in low:
        return "gather"  # the item and context rows summed
    if any(k in low for k in ("flash", "attention", "fmha", "cudnn", "_attention_kernel")):
        return "attention"
    if "norm" in low:
        return "rms_norm"
    if any(k in low for k in ("topk", "sort", "radix", "select")):
        return "top_k"
    if any(k in low for k in ("gather", "index", "embedding")):
        return "gather"
    return "other"


def attention_alone(device: torch.device, batches: list[int], window: int, heads: int = 8, head_dim: int = 64) -> list[dict]:
    """One layer's attention timed alone at the shipped sizes: cuDNN/SDPA with one causal (1, H, T, T)
    bias for the batch (the ids-only plan), the flash-style kernel with one (H, T, T) bias for the
    batch and with each user's (B, H, T, T) bias (the context plan), at a few tilings (the default
    first), and the kernel that builds the per-user bias (once per step, not per layer)."""
    from lite_rec.infer import triton_attention
    from lite_rec.model.context import TIME_BUCKETS

    rows = []
    for b in batches:
        gen = torch.Generator(device=device).manual_seed(b)
        qkv = torch.randn(b * window, 3 * heads * head_dim, device=device, generator=gen, dtype=torch.bfloat16)
        position = torch.randn(heads, window, window, device=device, generator=gen)  # (H, T, T) fp32
        future = torch.ones(window, window, dtype=torch.bool, device=device).triu(1)
        causal = position.masked_fill(future, float("-inf")).to(torch.bfloat16)[None]  # (1, H, T, T)
        gaps = torch.randint(1, 30 * 86_400, (b, window), device=device, generator=gen)
        times = (1_000_000_000 + gaps.cumsum(1)).contiguous()  # (B, T) int64
        table = torch.randn(heads, TIME_BUCKETS, device=device, generator=gen)  # (H, TIME_BUCKETS) head-major
        per_user = triton_attention.user_bias(times, position, table, torch.bfloat16)  # (B, H, T, T)
        shared = position.to(torch.bfloat16)  # (H, T, T)
        q, k, v = qkv.view(b, window, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        variants = {"sdpa_shared_bias": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=causal),
                    "user_bias_build": lambda: triton_attention.user_bias(times, position, table, torch.bfloat16)}
        for bm, bn, warps, stages in ((64, 64, 4, 2), (32, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2), (64, 64, 8, 3)):
            tiling = {"block_m": bm, "block_n": bn, "num_warps": warps, "num_stages": stages}
            for kind, bias in (("shared", shared), ("user", per_user)):
                variants[f"flash_{kind}_m{bm}_n{bn}_w{warps}_s{stages}"] = (
                    lambda x=bias, t=tiling: triton_attention.flash_attention(qkv, x, None, heads, 0.125, True, **t))
        for name, fn in variants.items():
            try:
                ms = p50_ms(fn, device, 50 if b < 512 else 20, 5, events=True)
                rows.append({"batch": b, "window": window, "variant": name, "ms": round(ms, 4)})
            except Exception as exc:  # a tiling that does not fit the GPU's shared memory
                rows.append({"batch": b, "window": window, "variant": name, "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
        best = min((r for r in rows if r["batch"] == b and "ms" in r and r["variant"].startswith("flash_user")),
                   key=lambda r: r["ms"])
        print(f"attention alone B={b}: " + "; ".join(f"{r['variant']} {r.get('ms')}" for r in rows if r["batch"] == b)
              + f" | best with a per-user bias {best['variant']}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=3416)
    parser.add_argument("--item-dim", type=int, default=384)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 1024])
    parser.add_argument("--quick", action="store_true", help="small layers, batches of 1 and 4, few repeats (a smoke test)")
    parser.add_argument("--profile", action="store_true", help="CUDA: also profile both plans and time the attention alone")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batches = [1, 4] if args.quick else args.batches
    torch.manual_seed(0)
    vectors = torch.randn(args.items + 1, args.item_dim) * 0.5
    vectors[0] = 0
    options = FastPathOptions(batch_buckets=tuple(sorted(set(batches))))
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "items": args.items, "top_k": TOP_K, "fast_path": {"batch_buckets": options.batch_buckets,
        "length_buckets": options.length_buckets}, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-context-") as tmp:
        recs = {}
        for profile in ("gpu", "gpu-ids"):
            config = profile_model(profile, args.quick)
            bundle = load_bundle(make_bundle(config, vectors, Path(tmp) / profile))
            recs[profile] = (fast_recommender(bundle, device, options), Recommender(bundle, device))
        window = recs["gpu"][0].spec.config.max_seq_len
        events, ids, request_times = synthetic_users(max(batches), window, args.items)
        for b in batches:
            ev, pl, rt = events[:b], ids[:b], request_times[:b]
            iters, warmup = (5, 1) if args.quick else (20, 3) if b >= 512 else (100, 10)
            for profile, history, label in (("gpu", ev, "events"), ("gpu-ids", pl, "ids"), ("gpu-ids", ev, "events")):
                fast, eager = recs[profile]
                prepared = fast.prepare(history, request_times=rt)
                row: dict[str, object] = {"profile": profile, "context_fields": fast.context_fields, "input": label,
                                          "batch": b, "window": window}
                if not (profile == "gpu-ids" and label == "events"):  # one step per model: events change no tensor of gpu-ids
                    row["step_ms"] = round(p50_ms(step_fn(fast, prepared), device, iters, warmup, events=True), 4)
                row["recommend_ms"] = round(p50_ms(lambda h=history: fast.recommend(h, TOP_K, request_times=rt),
                                                   device, max(3, iters // 5), 2, events=False), 3)
                got = fast.recommend(history, TOP_K, request_times=rt)
                want = eager.recommend(history, TOP_K, request_times=rt)
                row["top20_overlap_vs_fp32_eager"] = round(statistics.mean(
                    len(set(g.item_ids) & set(w.item_ids)) / TOP_K for g, w in zip(got, want, strict=True)), 4)
                report["rows"].append(row)  # type: ignore[union-attr]
                print(json.dumps(row), flush=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if args.profile and device.type == "cuda":
            def device_users(profile: str):  # noqa: ANN202
                def make(b: int) -> tuple[torch.Tensor, torch.Tensor | None]:
                    fast = recs[profile][0]
                    prepared = fast.prepare(events[:b], request_times=request_times[:b])
                    items = torch.stack([torch.as_tensor(p.indices[-window:]) for p in prepared]).to(device)  # (B, L)
                    if not fast.spec.config.uses_context:
                        return items, None
                    return items, torch.stack([torch.as_tensor(p.contexts[-window:]) for p in prepared]).to(device)  # (B, L, C)
                return make

            report["profile"] = profile_steps(recs, {p: device_users(p) for p in recs}, [b for b in batches if b > 1] or batches,
                                              device)
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            report["attention_alone"] = attention_alone(device, [b for b in batches if b > 1] or batches, window)
            args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
