"""Training-throughput benchmark of the three strategies and of a bare one-pass step.

Why synthetic data: the numbers that matter here (samples/s, seconds per ML-1m-sized epoch) depend
on the shapes, not on which movies are in the sequences, and a GPU worker need not hold the
dataset. The data mimics ML-1m after 5-core filtering and the leave-one-out split: 6,040 users,
3,706 items, ~165 interactions per user (so ~163 training items), popularity ~ Zipf.

It times exactly the code the trainer runs (``batches.BatchMaker`` + ``trainer.train_step`` with
AdamW, clipping, bf16 autocast on CUDA), so an epoch estimate here is an epoch of ``train_model``
without the validation pass. ``onepass`` and ``all`` supervise the same targets per epoch, so
their samples/s compare directly. The bare step is the yardstick: 32 users x 200 items,
full cross-entropy at every position over 3,416 items.

    python benchmarks/bench_train.py --device cuda --out bench_train.json           # H100
    python benchmarks/bench_train.py --device cpu --tiny --out /tmp/bench.json      # quick check

Needs torch (+ transformers for ``--backbones t5-small``); not pydantic, duckdb, prefect or mlflow.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lite_rec.core.model_config import ModelConfig
from lite_rec.data.sequences import build_sequence_store
from lite_rec.model.rec_llm import build_model  # noqa: E402
from lite_rec.train.batches import BatchMaker, epoch_plan
from lite_rec.train.trainer import make_optimizer, make_scheduler, train_step  # noqa: E402

PAPER = {"d_model": 512, "n_layers": 6, "n_heads": 8, "d_ff": 2048, "item_dim": 384}
TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "item_dim": 24}


def synthetic_sequences(users: int, items: int, mean_len: int, min_len: int, seed: int = 0) -> list[np.ndarray]:
    """Training sequences with ML-1m's shape: lengths min_len + geometric, Zipf item popularity."""
    rng = np.random.default_rng(seed)
    lengths = min_len + rng.geometric(1.0 / max(1, mean_len - min_len), size=users)
    lengths = np.minimum(lengths, items)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    weights /= weights.sum()
    return [rng.choice(np.arange(1, items + 1), size=n, replace=False, p=weights) for n in lengths]


def model_cfg(sizes: dict[str, int], backbone: str, max_seq_len: int) -> ModelConfig:
    """The benchmarked model's settings (``ModelConfig`` needs no pydantic)."""
    return ModelConfig(backbone=backbone, pretrained=False, d_model=sizes["d_model"], n_layers=sizes["n_layers"],
                       n_heads=sizes["n_heads"], d_ff=sizes["d_ff"], dropout=0.7, backbone_dropout=0.1,
                       item_repr="text", max_seq_len=max_seq_len)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(sizes: dict[str, int], backbone: str, n_items: int, max_len: int, causal: bool, device: torch.device,
           compile_model: bool) -> tuple[Any, Any, Any, Any]:
    vectors = torch.randn(n_items + 1, sizes["item_dim"])
    vectors[0] = 0
    model, _ = build_model(model_cfg(sizes, backbone, max_len), n_items, vectors, causal=causal)
    model.to(device).train()
    optimizer = make_optimizer(model, 5e-4, 0.1, 1e-6, device)
    scheduler = make_scheduler(optimizer, 10**6, 0.0)
    forward = torch.compile(model) if compile_model else model
    return model, optimizer, scheduler, forward


def time_strategy(strategy: str, seqs: list[np.ndarray], n_items: int, args: argparse.Namespace,
                  sizes: dict[str, int], backbone: str, device: torch.device) -> dict[str, Any]:
    """Seconds per step over `args.steps` steps after `args.warmup`, extrapolated to one epoch."""
    store = build_sequence_store(seqs)
    plan, order = epoch_plan(strategy, store, args.max_seq_len, seed=0, stage=1, epoch=0)
    batch_size = args.onepass_batch_size if strategy == "onepass" else args.batch_size
    maker = BatchMaker(store, args.max_seq_len, device)
    maker.set_plan(plan, order)
    n_batches = maker.n_batches(batch_size)
    model, optimizer, scheduler, forward = _setup(sizes, backbone, n_items, args.max_seq_len, strategy == "onepass",
                                                  device, args.compile)
    bf16 = device.type == "cuda" and not args.fp32
    # Partial-mode timing cycles over full batches only: one shape, so --compile compiles once.
    full = max(1, len(plan) // batch_size)
    measured = n_batches if args.full_epoch else args.steps
    t0 = 0.0
    for i in range(args.warmup + measured):
        if i == args.warmup:
            _sync(device)
            t0 = time.perf_counter()
        step = i - args.warmup if args.full_epoch and i >= args.warmup else i % full
        items, targets = maker.batch(step, batch_size)
        train_step(forward, model, optimizer, scheduler, items, targets, grad_clip=1.0, bf16=bf16)
    _sync(device)
    per_step = (time.perf_counter() - t0) / max(1, measured)
    epoch_seconds = per_step * n_batches
    return {"batch_size": batch_size, "steps_per_epoch": n_batches, "targets_per_epoch": plan.n_targets,
            "measured_steps": measured, "ms_per_step": per_step * 1e3, "epoch_seconds": epoch_seconds,
            "samples_per_s": plan.n_targets / epoch_seconds}


def time_bare_onepass(args: argparse.Namespace, sizes: dict[str, int], backbone: str, device: torch.device,
                      targets_per_epoch: int) -> dict[str, Any]:
    """One causal pass over (users x length) items, CE at every position over `bare_items` items."""
    users, length, n_items = args.bare_users, args.bare_length, args.bare_items
    model, optimizer, scheduler, forward = _setup(sizes, backbone, n_items, length, True, device, args.compile)
    g = torch.Generator().manual_seed(0)
    items = torch.randint(1, n_items + 1, (users, length), generator=g).to(device)  # (B, T)
    targets = torch.randint(1, n_items + 1, (users, length), generator=g).to(device)  # (B, T)
    bf16 = device.type == "cuda" and not args.fp32
    for _ in range(args.warmup):
        train_step(forward, model, optimizer, scheduler, items, targets, grad_clip=1.0, bf16=bf16)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(forward, model, optimizer, scheduler, items, targets, grad_clip=1.0, bf16=bf16)
    _sync(device)
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    return {"users": users, "length": length, "items": n_items, "ms_per_step": ms,
            "ml1m_epoch_seconds": ms / 1e3 * targets_per_epoch / (users * length)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("bench_train.json"))
    p.add_argument("--tiny", action="store_true", help="tiny model and data (CPU smoke check)")
    p.add_argument("--backbones", default="lean,t5-small", help="comma-separated: lean, t5-small")
    p.add_argument("--strategies", default="sampling,all,onepass")
    p.add_argument("--batch-size", type=int, default=256, help="samples per step (sampling, all)")
    p.add_argument("--onepass-batch-size", type=int, default=256, help="windows per step (onepass)")
    p.add_argument("--max-seq-len", type=int, default=20)
    p.add_argument("--steps", type=int, default=50, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--full-epoch", action="store_true", help="time every step of the epoch")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--bare-users", type=int, default=32)
    p.add_argument("--bare-length", type=int, default=200)
    p.add_argument("--bare-items", type=int, default=3416)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = TINY if args.tiny else PAPER
    users, n_items, mean_len = (300, 500, 40) if args.tiny else (6040, 3706, 163)
    if args.tiny:
        args.steps, args.warmup, args.bare_users, args.bare_length, args.bare_items = min(args.steps, 5), 1, 4, 50, 500
    seqs = synthetic_sequences(users, n_items, mean_len, min_len=18)
    targets_all = int(sum(len(s) - 1 for s in seqs))
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "bf16": device.type == "cuda" and not args.fp32, "compile": args.compile,
        "model": sizes, "max_seq_len": args.max_seq_len,
        "data": {"users": users, "items": n_items, "train_interactions": int(sum(map(len, seqs))),
                 "targets_per_all_epoch": targets_all},
        "strategies": {}, "bare_onepass_step": {},
    }
    for backbone in args.backbones.split(","):
        for strategy in args.strategies.split(","):
            row = time_strategy(strategy, seqs, n_items, args, sizes, backbone, device)
            result["strategies"][f"{backbone}/{strategy}"] = row
            print(f"{backbone:9s} {strategy:9s} {row['ms_per_step']:8.2f} ms/step  {row['epoch_seconds']:8.2f} s/epoch"
                  f"  {row['samples_per_s']:10.0f} samples/s", flush=True)
        bare = time_bare_onepass(args, sizes, backbone, device, targets_all)
        result["bare_onepass_step"][backbone] = bare
        print(f"{backbone:9s} bare onepass {bare['users']}x{bare['length']}: {bare['ms_per_step']:.2f} ms/step "
              f"(= {bare['ml1m_epoch_seconds']:.2f} s per ML-1m epoch)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
