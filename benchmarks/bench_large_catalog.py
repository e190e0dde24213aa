"""Catalogs of 1M and 10M items: training step time and memory per loss, and top-k serving.

A synthetic catalog stands in for an Amazon-size one (nothing of this size ships):

- **item vectors**: ``--item-dim`` (384, MiniLM's width) random "text" vectors for the model's
  input side, and ``--d-model`` (512, the shipped gpu profile) output vectors for serving, drawn as
  a mixture of ``--topics`` Gaussian clusters (a centre per topic plus item noise) so that nearest
  neighbours exist, as they do among real item vectors (i.i.d. vectors would be ANN's worst case);
- **popularity**: Zipf (``--zipf``) over item_idx, so targets, in-batch negatives and histories
  are dominated by a head of popular items;
- **sequence lengths**: log-normal with the moments of ML-1m's training sequences (median 94,
  mean 163, 16..2275 items), cut into one-pass windows of ``--seq-len`` items, as the trainer's
  ``plan_onepass`` cuts them.

Parts (``--parts``):

- ``train`` (one GPU): the shipped recommendation LLM (lean, d_model 512, 6 layers, 8 heads, d_ff
  2048, 200-item windows, text item inputs) and a batch of ``--batches`` one-pass windows; per
  loss (``train.loss`` full or sampled, ``lite_rec/train/losses.py``), the median time of a
  forward + backward + AdamW step under bf16 autocast and the peak CUDA memory. A loss that
  runs out of memory is a result (``"oom": true``), caught, and the next one runs.
- ``serve-gpu``: exact top-k (one fp32 / bf16 matrix product against every item, then
  ``torch.topk``) for ``--gpu-users`` users; the backbone's cost does not depend on the catalog
  (docs/benchmarks.md, serving at the shipped window) and is left out.
- ``serve-cpu``: one user on this CPU, exact (matrix product + top-k over fp32 items; at 10M the
  items are kept in bf16, 10 GB instead of 20, and scored in fp32 chunks: same ranking as fp32
  up to bf16 rounding of the item vectors) and FAISS IVF with 8-bit scalar quantization
  (``faiss-cpu``, inner product), its recall@k against the exact top-k over ``--recall-users``
  users and its latency for a few ``nprobe``.

Imports only torch, numpy and ``lite_rec.model`` / ``lite_rec.train.losses`` (which need pandas,
not pydantic, duckdb, prefect or mlflow), and faiss for its part, so it runs on a GPU machine with
only torch, numpy, pandas and pyarrow installed:

    python3 benchmarks/bench_large_catalog.py --parts train serve-gpu --device cuda --out large-gpu.json
    .venv/bin/python benchmarks/bench_large_catalog.py --parts serve-cpu --out docs/runs/large-catalog-cpu.json
    .venv/bin/python benchmarks/bench_large_catalog.py --quick --parts train serve-cpu --out /tmp/large.json  # smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lite_rec.core.model_config import ModelConfig  # noqa: E402
from lite_rec.model.rec_llm import build_model  # noqa: E402
from lite_rec.model.scoring import IGNORE_INDEX  # noqa: E402
from lite_rec.train.losses import NegativeSampler, SampledSoftmax  # noqa: E402

ML1M_LOG_LENGTH = (4.573, 1.015)  # mean and std of log(training sequence length) on ML-1m
ML1M_LENGTH_RANGE = (16, 2275)
CHUNK = 1 << 18  # items per chunk when vectors are generated or scored piecewise (0.5 GB of fp32 at d 512)


def zipf_cdf(n_items: int, exponent: float) -> torch.Tensor:
    """(N,) cumulative popularity of item_idx 1..N (rank r has weight r^-exponent)."""
    weights = torch.arange(1, n_items + 1, dtype=torch.float64).pow(-exponent)
    return (weights / weights.sum()).cumsum(0)


def draw_items(cdf: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """item_idx (1..N) of the given shape, Zipf-popular."""
    u = torch.rand(shape, dtype=torch.float64, generator=gen)
    return torch.searchsorted(cdf, u).clamp(max=cdf.shape[0] - 1) + 1


def window_widths(seq_len: int, seed: int, n_users: int = 20_000) -> np.ndarray:
    """Real positions of every one-pass window of ``n_users`` ML-1m-like sequences (``plan_onepass``)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(*ML1M_LOG_LENGTH, n_users).astype(int), *ML1M_LENGTH_RANGE)
    inputs = lengths - 1  # positions with a next item, cut into windows of seq_len (the last one partial)
    return np.concatenate([np.minimum(seq_len, n - np.arange(0, n, seq_len)) for n in inputs])


def onepass_batch(widths: np.ndarray, n_seqs: int, seq_len: int, cdf: torch.Tensor,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) right-padded items and (B, L) next-item targets (IGNORE_INDEX at padding) of windows
    drawn from ``widths``, items Zipf-popular."""
    pick = torch.randint(len(widths), (n_seqs,), generator=gen)
    width = torch.as_tensor(widths)[pick]  # (B,) real positions per window
    real = torch.arange(seq_len)[None, :] < width[:, None]  # (B, L)
    seq = draw_items(cdf, (n_seqs, seq_len + 1), gen)  # (B, L+1)
    items = torch.where(real, seq[:, :-1], 0)
    targets = torch.where(real, seq[:, 1:], IGNORE_INDEX)
    return items, targets


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(backbone="lean", pretrained=False, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
                       d_ff=args.d_ff, max_seq_len=args.seq_len, dropout=0.5, backbone_dropout=0.2, pooling="last",
                       item_repr="text")


def bench_train(args: argparse.Namespace, n_items: int, device: torch.device) -> list[dict[str, Any]]:
    """Per loss and batch size: median step time and peak memory, or where it ran out of memory."""
    gen = torch.Generator().manual_seed(args.seed)
    cdf = zipf_cdf(n_items, args.zipf)
    widths = window_widths(args.seq_len, args.seed)
    out = []
    for batch in args.batches:
        for loss in args.losses:
            row: dict[str, Any] = {"items": n_items, "loss": loss, "batch_seqs": batch, "seq_len": args.seq_len}
            if loss == "sampled":
                row.update(num_negatives=args.num_negatives, negative_sampler=args.negative_sampler, in_batch=True)
            model = optimizer = forward = None
            phase = "build"  # where an out-of-memory happened: build, forward, backward or optimizer
            try:
                torch.cuda.empty_cache() if device.type == "cuda" else None
                reset_peak(device)
                vectors = torch.randn(n_items + 1, args.item_dim, generator=gen) / args.item_dim ** 0.5
                vectors[0] = 0
                model, _ = build_model(model_config(args), n_items, vectors, causal=True)
                del vectors
                model = model.to(device).train()
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
                forward = model
                if loss == "sampled":
                    probs = torch.diff(cdf, prepend=torch.zeros(1, dtype=torch.float64))  # (N,) Zipf share
                    counts = np.r_[0.0, probs.numpy() * 1e9]  # (N+1,) expected target counts
                    forward = SampledSoftmax(model, NegativeSampler(counts, args.num_negatives, args.negative_sampler,
                                                                    in_batch=True, device=device))
                row["weights_gb"] = round(sum(t.numel() * t.element_size() for t in
                                              [*model.parameters(), *model.buffers()]) / 1e9, 2)
                times = []
                for step in range(args.warmup + args.steps):
                    items, targets = onepass_batch(widths, batch, args.seq_len, cdf, gen)
                    items, targets = items.to(device), targets.to(device)
                    sync(device)
                    t0 = time.perf_counter()
                    phase = "forward"
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        _, value = forward(items, targets)
                    optimizer.zero_grad(set_to_none=True)
                    phase = "backward"
                    value.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    phase = "optimizer"
                    optimizer.step()
                    sync(device)
                    if step >= args.warmup:
                        times.append(time.perf_counter() - t0)
                row.update(oom=False, step_ms=round(1e3 * float(np.median(times)), 1), loss_value=float(value.detach()),
                           targets_per_step=int((targets != IGNORE_INDEX).sum()))
            except torch.OutOfMemoryError as exc:
                row.update(oom=True, oom_phase=phase, error=str(exc).splitlines()[0][:300])
            row["peak_memory_gb"] = peak_gb(device)
            print(json.dumps(row), flush=True)
            out.append(row)
            del model, optimizer, forward
            gc.collect()
    return out


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def output_vector_chunks(n_items: int, dim: int, topics: int, seed: int) -> Iterator[torch.Tensor]:
    """Item output vectors 1..N in chunks of CHUNK rows, (c, D) fp32, the same for the same seed:
    a topic centre (topics drawn Zipf) plus item noise, scaled so scores are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(topics, dim, generator=gen)  # (K, D)
    topic_cdf = zipf_cdf(topics, 0.8)
    for start in range(0, n_items, CHUNK):
        n = min(CHUNK, n_items - start)
        topic = torch.searchsorted(topic_cdf, torch.rand(n, dtype=torch.float64, generator=gen)).clamp(max=topics - 1)
        yield (centres[topic] + 0.6 * torch.randn(n, dim, generator=gen)) / dim ** 0.5


def item_matrix(n_items: int, dim: int, topics: int, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(N, D) output vectors of items 1..N in ``dtype`` on ``device`` (row r is item_idx r + 1)."""
    out = torch.empty(n_items, dim, dtype=dtype, device=device)
    for i, chunk in enumerate(output_vector_chunks(n_items, dim, topics, seed)):
        out[i * CHUNK:i * CHUNK + len(chunk)] = chunk.to(device, dtype)
    return out


def user_vectors(items: torch.Tensor, n_users: int, cdf: torch.Tensor, seed: int) -> torch.Tensor:
    """(U, D) fp32 users: the mean of 8 Zipf-popular items' vectors (a history), plus noise."""
    gen = torch.Generator().manual_seed(seed + 1)
    history = draw_items(cdf, (n_users, 8), gen) - 1  # (U, 8) rows of ``items``
    users = items[history.to(items.device)].float().mean(1)  # (U, D)
    return users + 0.1 * torch.randn(users.shape, generator=gen).to(users.device) / users.shape[1] ** 0.5


def exact_topk(users: torch.Tensor, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, k) scores and rows of the best items: fp32 products over CHUNK-row slices, merged."""
    best_s = best_i = None
    for start in range(0, items.shape[0], CHUNK):
        scores = users @ items[start:start + CHUNK].float().T  # (U, c)
        s, i = scores.topk(min(k, scores.shape[1]), dim=1)
        i = i + start
        if best_s is not None:
            s, j = torch.cat([best_s, s], 1).topk(k, dim=1)
            i = torch.cat([best_i, i], 1).gather(1, j)
        best_s, best_i = s, i
    return best_s, best_i


def timed(fn: Any, repeats: int, device: torch.device, *fn_args: Any) -> dict[str, float]:
    """Median and best wall time of ``fn(*fn_args)`` after one warm-up call."""
    fn(*fn_args)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*fn_args)
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_ms": round(1e3 * float(np.median(times)), 3), "min_ms": round(1e3 * min(times), 3), "repeats": repeats}


def score_topk(users: torch.Tensor, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, D) users against (N, D) items in one product: (U, k) scores and rows."""
    return (users @ items.T).topk(k, dim=1)


def bench_serve_gpu(args: argparse.Namespace, n_items: int, device: torch.device) -> list[dict[str, Any]]:
    cdf = zipf_cdf(n_items, args.zipf)
    out = []
    for dtype in (torch.float32, torch.bfloat16):
        row: dict[str, Any] = {"items": n_items, "users": args.gpu_users, "k": args.k, "item_dtype": str(dtype)[6:]}
        try:
            items = item_matrix(n_items, args.d_model, args.topics, args.seed, dtype, device)
            users = user_vectors(items, args.gpu_users, cdf, args.seed).to(dtype)
            row.update(timed(score_topk, args.repeats, device, users, items, args.k), oom=False)
            row["items_gb"] = round(items.numel() * items.element_size() / 1e9, 2)
            del items, users
        except torch.OutOfMemoryError as exc:
            row.update(oom=True, error=str(exc).splitlines()[0][:300])
        torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def bench_serve_cpu(args: argparse.Namespace, n_items: int) -> list[dict[str, Any]]:
    """One user, exact (resident matrix) then FAISS IVF-SQ8 (built from regenerated chunks after
    the exact matrix is freed: both never sit in memory together)."""
    cpu = torch.device("cpu")
    cdf = zipf_cdf(n_items, args.zipf)
    dtype = torch.float32 if n_items * args.d_model * 4 <= args.max_fp32_gb * 1e9 else torch.bfloat16
    t0 = time.perf_counter()
    items = item_matrix(n_items, args.d_model, args.topics, args.seed, dtype, cpu)
    build_s = time.perf_counter() - t0
    users = user_vectors(items, args.recall_users, cdf, args.seed)  # (U, D) fp32
    one = users[:1]
    exact = {"items": n_items, "method": "exact", "item_dtype": str(dtype)[6:], "k": args.k, "users": 1,
             "items_gb": round(items.numel() * items.element_size() / 1e9, 2), "generate_s": round(build_s, 1),
             **timed(exact_topk, args.repeats, cpu, one, items, args.k)}
    print(json.dumps(exact), flush=True)
    truth = exact_topk(users, items, args.k)[1]  # (U, k) rows
    del items
    gc.collect()
    rows = [exact]
    if "faiss" in args.cpu_methods:
        rows += faiss_rows(args, n_items, users, truth)
    return rows


def faiss_rows(args: argparse.Namespace, n_items: int, users: torch.Tensor, truth: torch.Tensor) -> list[dict[str, Any]]:
    import faiss

    nlist = args.nlist
    quantizer = faiss.IndexFlatIP(args.d_model)
    index = faiss.IndexIVFScalarQuantizer(quantizer, args.d_model, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = args.kmeans_iters
    chunks = output_vector_chunks(n_items, args.d_model, args.topics, args.seed)
    t0 = time.perf_counter()
    first = next(chunks).numpy()
    sample = first[np.random.default_rng(args.seed).choice(len(first), min(len(first), 32 * nlist), replace=False)]
    index.train(sample)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.add(first)
    for chunk in chunks:
        index.add(chunk.numpy())
    add_s = time.perf_counter() - t0
    queries = users.numpy().astype(np.float32)
    truth_sets = [set(row.tolist()) for row in truth]
    rows = []
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        _, found = index.search(queries, args.k)  # (U, k) rows
        recall = float(np.mean([len(truth_sets[u] & set(found[u].tolist())) / args.k for u in range(len(queries))]))
        row = {"items": n_items, "method": f"faiss IVF{nlist},SQ8", "nprobe": nprobe, "k": args.k, "users": 1,
               "recall_at_k": round(recall, 4), "recall_users": len(queries), "train_s": round(train_s, 1),
               "add_s": round(add_s, 1), "index_gb": round(index.sa_code_size() * n_items / 1e9, 2),
               **timed(index.search, args.repeats, torch.device("cpu"), queries[:1], args.k)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=["train", "serve-gpu", "serve-cpu"], default=["serve-cpu"])
    parser.add_argument("--items", nargs="+", type=int, default=[1_000_000, 10_000_000])
    parser.add_argument("--device", default="cuda", help="device of the train part (serve-cpu always runs on the CPU)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of item popularity")
    parser.add_argument("--topics", type=int, default=4096, help="clusters of the item output vectors")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--n-layers", type=int, default=6)
    parser.add_argument("--n-heads", type=int, default=8)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--item-dim", type=int, default=384, help="width of the text item vectors (MiniLM)")
    parser.add_argument("--seq-len", type=int, default=200)
    parser.add_argument("--batches", nargs="+", type=int, default=[128, 16], help="sequences per training step")
    parser.add_argument("--losses", nargs="+", choices=["full", "sampled"], default=["full", "sampled"])
    parser.add_argument("--num-negatives", type=int, default=8192)
    parser.add_argument("--negative-sampler", choices=["uniform", "popularity"], default="uniform")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--gpu-users", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--recall-users", type=int, default=200)
    parser.add_argument("--cpu-methods", nargs="+", choices=["exact", "faiss"], default=["exact", "faiss"])
    parser.add_argument("--nprobe", nargs="+", type=int, default=[8, 32, 128])
    # 1024 lists at both sizes: a 2-core CPU assigns 10M vectors to 1024 centroids in minutes (to 4 sqrt(N) = 12,600: an hour)
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (k-means on 32 x nlist items)")
    parser.add_argument("--kmeans-iters", type=int, default=10)
    parser.add_argument("--max-fp32-gb", type=float, default=8.0, help="above this the CPU item matrix is kept in bf16")
    args = parser.parse_args()
    if args.quick:
        args.items, args.d_model, args.n_layers, args.d_ff, args.item_dim = [20_000], 64, 1, 128, 32
        args.seq_len, args.batches, args.num_negatives, args.topics, args.repeats = 50, [8], 256, 64, 3
        args.nlist, args.nprobe, args.recall_users, args.steps = 64, [4, 16], 50, 2
    device = torch.device(args.device if torch.cuda.is_available() or args.device == "cpu" else "cpu")
    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "parts")},
        "train": [], "serve_gpu": [], "serve_cpu": [],
    }
    for n_items in args.items:
        if "train" in args.parts:
            result["train"] += bench_train(args, n_items, device)
        if "serve-gpu" in args.parts and device.type == "cuda":
            result["serve_gpu"] += bench_serve_gpu(args, n_items, device)
        if "serve-cpu" in args.parts:
            result["serve_cpu"] += bench_serve_cpu(args, n_items)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
