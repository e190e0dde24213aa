"""Online serving on this machine's CPU: in-process step, HTTP latency and throughput, and where the time goes.

An ML-1m-sized model with random weights (3,706 items by default, 384-d item vectors through the
adapter, the T5-small-sized recommendation LLM: d_model 512, 6 layers, 8 heads, d_ff 2048),
20-item histories, k = 10. Measures:

1. in process: the model step (forward + head + top-k) and ``Recommender.recommend`` per user,
   for the plain recommender and the fast path, batch 1 and 32;
2. a breakdown of one request: JSON parsing + validation, id mapping, backbone forward (incl.
   pooling), head matmul, mask + top-k, building and serialising the response;
3. over HTTP, against the real service (``python -m lite_rec.serve.app`` on 127.0.0.1): sequential
   single-request latency p50/p99, then throughput with concurrent keep-alive clients, and the
   batch endpoint in users/s. The load generator shares the CPU with the server, as it would
   on a 2-core box; its cost is part of what is measured.

    python benchmarks/bench_serve.py --out bench_serve.json             # ~3-4 minutes on 2 cores
    python benchmarks/bench_serve.py --quick --out /tmp/bench.json      # smoke test
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lite_rec.core.config import ModelConfig  # noqa: E402
from lite_rec.infer.bundle import load_bundle, save_bundle  # noqa: E402
from lite_rec.infer.fast_path import FastModel, fast_recommender  # noqa: E402
from lite_rec.infer.recommender import Recommender  # noqa: E402
from lite_rec.model.rec_llm import build_model  # noqa: E402
from lite_rec.serve.app import RecommendRequest  # noqa: E402


def build_bundle(out: Path, items: int, item_dim: int, backbone: str, seq_len: int) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, pretrained=False, d_model=512, n_layers=6, n_heads=8, d_ff=2048, dropout=0.0, max_seq_len=seq_len)
    vectors = torch.randn(items + 1, item_dim) * 0.5
    vectors[0] = 0
    model, _ = build_model(cfg, items, vectors, causal=False)
    ids = [str(1000 + i) for i in range(1, items + 1)]
    return save_bundle(
        out, spec=model.spec.to_dict(), model_config=cfg, state_dict=model.state_dict(), dataset="ml-1m-random",
        items=pd.DataFrame({"item_idx": range(1, items + 1), "item_id": ids, "title": [f"Movie {i} (1999)" for i in ids]}),
        popularity=pd.DataFrame({"item_idx": range(1, items + 1), "count": np.arange(items, 0, -1)}), overwrite=True,
    )


def median_ms(fn: Callable[[], object], iters: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "min_ms": times[0], "p90_ms": times[int(len(times) * 0.9) - 1 if len(times) > 1 else 0]}


def histories(ids: list[str], n: int, length: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [[ids[i] for i in rng.choice(len(ids), length, replace=False)] for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# In process


@torch.inference_mode()
def in_process(bundle_dir: Path, args: argparse.Namespace) -> dict:
    bundle = load_bundle(bundle_dir)
    plain = Recommender(bundle)
    fast = fast_recommender(bundle, "cpu")
    ids = bundle.items["item_id"].tolist()
    out: dict = {"threads": torch.get_num_threads()}
    for batch in (1, 32):
        hs = histories(ids, batch, args.history, seed=batch)
        idx, _ = plain.to_indices(hs)
        items = torch.zeros(batch, plain.max_seq_len, dtype=torch.long)
        for b, h in enumerate(idx):
            items[b, : len(h)] = torch.as_tensor(h[-plain.max_seq_len :])
        iters = args.iters if batch == 1 else max(args.iters // 4, 3)
        out[f"model_step_b{batch}"] = median_ms(lambda: torch.topk(plain.model(items)[0], args.k), iters)
        out[f"recommend_plain_b{batch}"] = median_ms(lambda: plain.recommend(hs, args.k), iters)
        out[f"recommend_fast_b{batch}"] = median_ms(lambda: fast.recommend(hs, args.k), iters)
        print(f"in-process B={batch}: step {out[f'model_step_b{batch}']['p50_ms']:.2f} ms, recommend plain "
              f"{out[f'recommend_plain_b{batch}']['p50_ms']:.2f} ms, fast {out[f'recommend_fast_b{batch}']['p50_ms']:.2f} ms", flush=True)
    out["breakdown_b1"] = breakdown(fast, ids, args)
    return out


@torch.inference_mode()
def breakdown(rec: Recommender, ids: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Median ms of each stage of one request (the same calls the service makes, timed apart)."""
    model: FastModel = rec.model  # type: ignore[assignment]
    inner = model.runner if model.runner is not None else model.inner  # what the service runs
    history = histories(ids, 1, args.history, seed=99)[0]
    body = json.dumps({"history": history, "k": args.k}).encode()
    req = RecommendRequest.model_validate_json(body)
    idx, _ = rec.to_indices([history])
    items = torch.zeros(1, rec.max_seq_len, dtype=torch.long)
    items[0, : len(idx[0])] = torch.as_tensor(idx[0])
    trimmed = model.trim(items)
    user = inner.user_vectors(trimmed)
    logits = inner.item_logits(user)
    result = rec.recommend([history], args.k)[0]
    payload = {"items": [{"item_id": i, "score": s, "title": t} for i, s, t in result.items], "fallback": False,
               "unknown_item_ids": [], "history_items_used": len(history), "k": args.k, "model_version": "1", "model": "x"}
    it = args.iters

    def mask_topk() -> object:
        masked = logits.clone()
        masked.scatter_(1, torch.as_tensor(idx[0])[None], float("-inf"))
        return torch.topk(masked, args.k)

    stages = {
        "json_parse_validate": median_ms(lambda: RecommendRequest.model_validate(json.loads(body)), it * 5),
        "id_mapping": median_ms(lambda: rec.to_indices([[str(i) for i in req.history]]), it * 5),
        "backbone_forward_pool": median_ms(lambda: inner.user_vectors(trimmed), it),
        "head_matmul": median_ms(lambda: inner.item_logits(user), it),
        "mask_topk": median_ms(mask_topk, it * 5),
        "build_and_serialise": median_ms(lambda: json.dumps({**payload, "items": [
            {"item_id": i, "score": s, "title": t} for i, s, t in rec._rows(np.arange(1, args.k + 1), [0.5] * args.k)]}).encode(), it * 5),
        "recommend_total": median_ms(lambda: rec.recommend([history], args.k), it),
    }
    out = {k: round(v["p50_ms"], 4) for k, v in stages.items()}
    print("breakdown (ms, p50): " + ", ".join(f"{k} {v}" for k, v in out.items()), flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Over HTTP


class Service:
    """The real service in a subprocess (its own process group), stopped by PID."""

    def __init__(self, bundle_dir: Path, port: int, threads: int, coalesce: int, log: Path) -> None:
        cmd = [sys.executable, "-m", "lite_rec.serve.app", "--model", str(bundle_dir), "--device", "cpu", "--host", "127.0.0.1",
               "--port", str(port), "--set", f"serve.torch_threads={threads}", "--set", f"serve.coalesce_max_users={coalesce}",
               "--log-level", "warning"]
        self.port = port
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, process_group=0)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {log.read_text()[-2000:]}")
            try:
                if self.request("GET", "/ready")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("service not ready in 180 s")

    def request(self, method: str, path: str, body: bytes | None = None, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(method, path, body=body, headers={"content-type": "application/json"} if body else {})
        resp = conn.getresponse()
        data = resp.read()
        if own:
            conn.close()
        return resp.status, data

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def over_http(bundle_dir: Path, ids: list[str], threads: int, coalesce: int, args: argparse.Namespace, log_dir: Path) -> dict:
    svc = Service(bundle_dir, _free_port(), threads, coalesce, log_dir / f"serve-t{threads}-c{coalesce}.log")
    try:
        bodies = [json.dumps({"history": h, "k": args.k}).encode() for h in histories(ids, 64, args.history, seed=7)]
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
        lat = []
        for i in range(args.http_requests + 10):
            t = time.perf_counter()
            status, _ = svc.request("POST", "/recommend", bodies[i % len(bodies)], conn)
            if i >= 10:
                lat.append((time.perf_counter() - t) * 1000)
            assert status == 200
        seq = {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "req_per_s": 1000 / float(np.mean(lat))}
        print(f"HTTP t={threads} c={coalesce} sequential: p50 {seq['p50_ms']:.2f} ms, p99 {seq['p99_ms']:.2f} ms, {seq['req_per_s']:.1f} req/s", flush=True)
        out: dict = {"torch_threads": threads, "coalesce_max_users": coalesce, "sequential": seq}
        for clients in args.clients:
            out[f"concurrent_{clients}"] = load(svc, bodies, clients, args.duration)
            r = out[f"concurrent_{clients}"]
            print(f"HTTP t={threads} c={coalesce} {clients} clients: {r['req_per_s']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"{r['failed']} failed", flush=True)
        conn.close()  # idle through the load test: uvicorn drops keep-alive connections after 5 s
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=120)
        for batch in (32, 256):
            body = json.dumps({"histories": histories(ids, batch, args.history, seed=batch), "k": args.k}).encode()
            timing = median_ms(lambda: svc.request("POST", "/recommend/batch", body, conn), max(args.iters // 8, 3), warmup=1)
            out[f"batch_{batch}"] = {**timing, "users_per_s": batch / timing["p50_ms"] * 1000}
            print(f"HTTP t={threads} c={coalesce} batch {batch}: {timing['p50_ms']:.1f} ms, {batch / timing['p50_ms'] * 1000:.0f} users/s", flush=True)
        conn.close()
        return out
    finally:
        svc.stop()


def load(svc: Service, bodies: list[bytes], clients: int, duration: float) -> dict:
    lat: list[float] = []
    failed = [0]
    stop_at = time.monotonic() + duration

    def client(seed: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=60)
        i = seed
        while time.monotonic() < stop_at:
            t = time.perf_counter()
            try:
                status, _ = svc.request("POST", "/recommend", bodies[i % len(bodies)], conn)
            except OSError:
                status = -1
            lat.append((time.perf_counter() - t) * 1000)
            failed[0] += status != 200
            i += 1
        conn.close()

    started = time.monotonic()
    ts = [threading.Thread(target=client, args=(s,)) for s in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - started
    return {"requests": len(lat), "failed": failed[0], "req_per_s": len(lat) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--items", type=int, default=3706)
    p.add_argument("--item-dim", type=int, default=384)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backbones", nargs="+", default=["t5-small", "lean"])
    p.add_argument("--http-backbone", default="t5-small", help="the backbone served over HTTP (config default: t5-small)")
    p.add_argument("--http-configs", nargs="+", default=["1:16", "1:1"],
                   help="THREADS:COALESCE pairs (serve.torch_threads, serve.coalesce_max_users) measured over HTTP")
    p.add_argument("--inproc-threads", type=int, nargs="+", default=[1], help="torch threads for the in-process part")
    p.add_argument("--clients", type=int, nargs="+", default=[4])
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--http-requests", type=int, default=200)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.http_requests, args.duration, args.http_configs, args.backbones = 4, 20, 2.0, ["1:16"], [args.http_backbone]
        args.inproc_threads = [1]
    report: dict = {"cpu": os.cpu_count(), "torch": torch.__version__, "config": {k: str(v) for k, v in vars(args).items()},
                    "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        bundles = {b: build_bundle(root / f"bundle-{b}", args.items, args.item_dim, b, args.history) for b in set(args.backbones) | {args.http_backbone}}
        for b in args.backbones:
            for threads in args.inproc_threads:
                torch.set_num_threads(threads)
                print(f"== in process, backbone {b}, torch threads {threads}", flush=True)
                report[f"in_process_{b}_t{threads}"] = in_process(bundles[b], args)
        ids = load_bundle(bundles[args.http_backbone]).items["item_id"].tolist()
        for pair in args.http_configs:
            threads, coalesce = (int(x) for x in pair.split(":"))
            print(f"== HTTP, backbone {args.http_backbone}, torch threads {threads}, coalesce {coalesce}", flush=True)
            report[f"http_t{threads}_c{coalesce}"] = over_http(bundles[args.http_backbone], ids, threads, coalesce, args, root)
    report["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
