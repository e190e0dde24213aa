"""Online serving on this machine (its CPU; ``--device cuda`` on a GPU one): in-process step, HTTP latency and throughput.

Two models, picked by ``--profile``:

- no ``--profile`` (the default, what this benchmark measured before profiles, and what old commands
  still measure): an ML-1m-sized ids-only model with random weights (3,706 items, 384-d item vectors
  through the adapter, the T5-small-sized recommendation LLM: d_model 512, 6 layers, 8 heads,
  d_ff 2048; backbones ``--backbones`` in process, ``--http-backbone`` over HTTP), its window
  ``--history`` (20) items, every history ``--history`` item ids long;
- ``--profile NAME``: the model of a shipped profile (configs/profiles/<name>.yaml) as
  ``benchmarks/bench_serve_suite.py`` builds it (its ``profile_config`` and ``build_models``,
  imported from there): the profile's ``model`` section as training resolves it for ML-1m, 3,416
  items, random weights (the backbone's a random T5's mapped into the lean layout) and random
  nonzero context tables (N(0, 0.5), padding rows zero: training starts them at zero or near it, and
  zero tables would let a service that ignored the events give the same answers). ``gpu``: a lean
  T5-small-sized encoder, causal, 200-item window, ``pooling: last``, ``item_repr: text+id``,
  ``history_logit``, and per event its gap to the previous one and its rating (``time_gaps``,
  ``ratings``), attention biased by the time between events (``time_bias``) and the gap to the
  request's time (``query_time``, one-hour floor). ``gpu-ids``: the same reading item ids alone.
  The window is the profile's ``model.max_seq_len`` (``--window`` overrides). The old setting is
  close to ``--profile gpu-ids --window 20`` (same sizes, but a lean causal backbone, text+id items,
  3,416 items).

Requests are synthetic users, the same ones in every section: user u's history is ``--history``
items long, or with ``--lengths PATH`` (a .npy of per-user history lengths, e.g.
data/ml1m-history-lengths.npy: the 6,040 ML-1m users' test-time lengths) the length of a user
drawn at random from the file, capped at the window. Items are distinct ids drawn at random. For a
model that reads context (``gpu``: ``context_fields`` ``ts``, ``rating``, ``request_time``) every
history entry is an event ``{"item_id", "ts", "rating"}`` as docs/serving.md documents it:
increasing Unix ``ts`` (gaps log-uniform from 1 s to 30 days, as bench_serve_suite draws them),
ratings 1-5, and the request carries ``request_time``. Every user's last event is at the same
instant and ``request_time`` is an hour after it: the batch endpoint takes one request time for
all its histories, and this way it is an hour after each user's last event there too. An ids-only
model gets plain id lists. The service builds the context rows itself from the events (as the
in-process recommender does: ``Recommender.prepare``), so that work is in every number below.

The model is saved as a bundle (``lite_rec.infer.bundle.save_bundle``, whose manifest records the
model's ``context_fields``; the run stops unless they are the model's) and served from it: the
service reads them there, says them in ``/ready`` (``ready_context_fields``) and refuses a history of
ids alone for a context model (checked once per service: ``ids_only_request``, 422
``missing_context``). Measures, and where the time goes:

1. in process (``--device``; torch threads ``--inproc-threads``): the model step (forward + head +
   top-k over the full window, as ``Recommender.score_indices`` pads) and ``Recommender.recommend``
   per request (reading the events too), for the plain recommender and the fast path, 1 user (user 0)
   and 32 users (users 0-31) per call; ``topk_fast_vs_plain``: both give the same top-k;
2. a breakdown of one request (user 0): JSON parsing + validation, id mapping, ``prepare`` (ids +
   context rows + their checks), backbone forward (incl. pooling), head matmul, mask + top-k,
   building and serialising the response;
3. over HTTP, against the real service (``python -m lite_rec.serve.app --device <--device>`` on
   127.0.0.1, per ``--http-configs`` pair of ``serve.torch_threads`` and
   ``serve.coalesce_max_users``): sequential single-request latency p50/p99 over users 0-63 in
   turn, then throughput with ``--clients`` concurrent keep-alive clients, and the batch endpoint
   (``--batch-users``: users 0-31, 0-255) in users/s. The load generator shares the CPU with the
   server, as it would on a 2-core box; its cost is part of what is measured. Every 4xx/5xx stops
   the run with the service's answer. ``topk_vs_in_process``: the service's answers (single and
   batch) against the plain in-process recommender's for the same users. A batch body larger than
   ``serve.max_body_bytes`` (1 MiB: at ~53 bytes an event, ~180 ML-1m-length event histories) is
   sent to a service started with the limit raised to fit (``serve_settings`` says so).

The JSON says which model (``model``: profile, its ``context_fields`` and those the bundle manifest
and the service's ``/ready`` report, architecture, window) and which requests (``requests``: the
length source, the lengths drawn, the request format and an example).

    .venv/bin/python benchmarks/bench_serve.py --out bench_serve.json             # ids-only, 20 items: ~3-4 min on 2 cores
    .venv/bin/python benchmarks/bench_serve.py --quick --out /tmp/bench.json      # smoke test, ~75 s
    .venv/bin/python benchmarks/bench_serve.py --profile gpu --lengths data/ml1m-history-lengths.npy \\
        --http-configs 1:16 --iters 24 --out /tmp/bench-serve-gpu-profile.json   # the shipped model, real lengths: 10.5 min
    .venv/bin/python benchmarks/bench_serve.py --profile gpu --quick --lengths data/ml1m-history-lengths.npy \\
        --out /tmp/bench-gpu.json                                                # smoke test, small model, window 48: ~20 s
    python benchmarks/bench_serve.py --profile gpu --lengths data/ml1m-history-lengths.npy --device cuda \\
        --out serve-gpu.json                                                     # the same on a GPU machine

On 2 CPU cores and one torch thread the ``gpu`` model takes ~0.13 s for one user at ML-1m lengths
and ~0.22 s a user in calls of 32 or more (padded to their longest history): with the defaults (both
``--http-configs``, ``--iters 40``) its run would take ~20 min (projected), most of it the 32-user
in-process calls (~8 s each) and the 256-user batch calls (~64 s each); the command above drops the
1:1 configuration and times fewer calls (B=32: 6 + 3 warm-up; batch endpoint: 3 + 1).

``--quick``: few iterations, one HTTP configuration; with ``--profile`` also a small model (d_model
64, 2 layers, 300 items, 24-d item vectors, window 48), without it the full-size ids-only model.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from typing import Any

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from bench_serve_suite import (  # noqa: E402 - the profile's model, built as the GPU suite builds it
    CONTEXT_TABLE_STD,
    DATASET,
    MAX_GAP_S,
    REQUEST_AFTER_S,
    build_models,
    profile_config,
)

from lite_rec.core.config import ConfigError, ModelConfig, ServeConfig  # noqa: E402
from lite_rec.infer.bundle import load_bundle, save_bundle  # noqa: E402
from lite_rec.infer.fast_path import FastModel, fast_recommender  # noqa: E402
from lite_rec.infer.recommender import Recommender, right_padded  # noqa: E402
from lite_rec.model.context import RATING_LEVELS, context_fields  # noqa: E402
from lite_rec.model.rec_llm import build_model  # noqa: E402
from lite_rec.serve.app import RecommendRequest, _entries  # noqa: E402 - _entries: the service's own event -> dict

LEGACY_ITEMS = 3706  # the ids-only model without --profile: ML-1m's items before 5-core
PROFILE_ITEMS = 3416  # with --profile: ML-1m after 5-core, as bench_serve_suite
LAST_EVENT_TS = 1_200_000_000  # 2008-01-10, Unix seconds: every synthetic user's last event (histories go back from here)
HTTP_USERS = 64  # /recommend bodies rotate over users 0..63; the top-k check covers them
QUICK_PROFILE = {"items": 300, "item_dim": 24, "window": 48}  # --quick --profile: bench_serve_suite's small model
LEGACY_ARCHITECTURE = {"d_model": 512, "n_layers": 6, "n_heads": 8, "d_ff": 2048}  # without --profile: T5-small-sized


# ---------------------------------------------------------------------------------------------
# The model


def legacy_bundle(out: Path, items: int, item_dim: int, backbone: str, seq_len: int) -> Path:
    """The ids-only model of this benchmark before profiles (random weights), saved as a bundle."""
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, pretrained=False, **LEGACY_ARCHITECTURE, dropout=0.0, max_seq_len=seq_len)
    vectors = torch.randn(items + 1, item_dim) * 0.5  # (N+1, D_item) cached item vectors
    vectors[0] = 0
    model, _ = build_model(cfg, items, vectors, causal=False)
    return save_bundle(out, spec=model.spec.to_dict(), model_config=cfg, state_dict=model.state_dict(), dataset="ml-1m-random",
                       overwrite=True, **catalog(items))


def profile_bundle(out: Path, args: argparse.Namespace, config: ModelConfig, causal: bool) -> Path:
    """The profile's model as bench_serve_suite builds it (random weights, random context tables), saved as a
    bundle; the manifest records its ``context_fields``, which the service reads."""
    model = build_models(args, config, causal, torch.device("cpu"))["lean"]
    return save_bundle(out, spec=model.spec, state_dict=model.state_dict(), dataset="ml-1m-random", overwrite=True,
                       **catalog(args.items))


def catalog(items: int) -> dict[str, pd.DataFrame]:
    """A bundle's id table (raw ids "1001".."1000+N") and popularity list (item 1 most popular)."""
    ids = [str(1000 + i) for i in range(1, items + 1)]
    return {"items": pd.DataFrame({"item_idx": range(1, items + 1), "item_id": ids, "title": [f"Movie {i} (1999)" for i in ids]}),
            "popularity": pd.DataFrame({"item_idx": range(1, items + 1), "count": np.arange(items, 0, -1)})}


def manifest_context_fields(bundle_dir: Path) -> list[str] | None:
    """What the bundle's manifest.json says a request must carry besides item ids (the service reads it there)."""
    return json.loads((bundle_dir / "manifest.json").read_text()).get("context_fields")


def build_bundles(args: argparse.Namespace, config: ModelConfig | None, causal: bool, labels: list[str],
                  root: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The bundles served (by label: the profile, or each backbone of the ids-only model) and what the report
    says of the model; checks that the bundle manifest records the context fields the model reads."""
    if config is not None:
        bundles = {args.profile: profile_bundle(root / "bundle", args, config, causal)}
        fields = context_fields(config)
        model = {"profile": args.profile, "profile_source": f"configs/{DATASET}.yaml + configs/profiles/{args.profile}.yaml",
                 "built_by": "bench_serve_suite.build_models (random weights)", "context_fields": fields,
                 "context_features": config.context_features,
                 "context_tables": f"random N(0, {CONTEXT_TABLE_STD}), padding rows 0" if config.uses_context else None,
                 "architecture": {name: getattr(config, name) for name in LEGACY_ARCHITECTURE},  # the same fields
                 "backbone": config.backbone,
                 "causal": causal, "pooling": config.pooling, "item_repr": config.item_repr, "model_settings": config.to_dict()}
    else:
        bundles = {b: legacy_bundle(root / f"bundle-{b}", args.items, args.item_dim, b, args.window) for b in sorted(set(labels))}
        fields = []
        model = {"profile": None, "context_fields": fields, "architecture": LEGACY_ARCHITECTURE, "backbones": sorted(bundles),
                 "http_backbone": args.http_backbone, "causal": False}
    model |= {"window": args.window, "items": args.items, "item_dim": args.item_dim}
    recorded = {label: manifest_context_fields(path) for label, path in bundles.items()}
    if any(r != fields for r in recorded.values()):
        raise RuntimeError(f"the bundle manifests record context fields {recorded}; the model reads {fields}")
    model["bundle_manifest_context_fields"] = next(iter(recorded.values()))
    return bundles, model


# ---------------------------------------------------------------------------------------------
# The requests


@dataclasses.dataclass(frozen=True)
class Users:
    """The synthetic users every section asks about, as a client sends them: user u is ``histories[u]``."""

    histories: list[list[Any]]  # per user, oldest first: item ids, or events {"item_id", "ts", "rating"} for a context model
    request_time: int | None  # Unix seconds, an hour after every user's last event (all at LAST_EVENT_TS); None: ids only
    lengths: np.ndarray  # (U,) int64 history lengths

    def _time(self) -> dict[str, int]:
        return {} if self.request_time is None else {"request_time": self.request_time}

    def recommend_body(self, user: int, k: int) -> dict[str, Any]:
        """``POST /recommend``: one user's history (and the request time)."""
        return {"history": self.histories[user], **self._time(), "k": k}

    def batch_body(self, count: int, k: int) -> dict[str, Any]:
        """``POST /recommend/batch``: users 0..count-1 and the one request time they share."""
        return {"histories": self.histories[:count], **self._time(), "k": k}

    def request_times(self, count: int) -> list[int] | None:
        """One request time per user for ``Recommender.recommend`` / ``prepare`` (None: the model reads none)."""
        return None if self.request_time is None else [self.request_time] * count


def draw_lengths(args: argparse.Namespace, window: int, count: int) -> tuple[np.ndarray, dict[str, Any]]:
    """(count,) history lengths: users drawn at random from ``--lengths`` (capped at the window), or all ``--history``."""
    if args.lengths is None:
        fixed = min(args.history, window)
        return np.full(count, fixed, dtype=np.int64), {"source": f"fixed: {fixed} items (--history)"}
    all_lengths = np.minimum(np.load(args.lengths).astype(np.int64), window)  # (U_file,)
    lengths = np.random.default_rng(1).choice(all_lengths, count)  # (count,)
    return lengths, {"source": str(args.lengths), "file_users": len(all_lengths), "file_median": float(np.median(all_lengths)),
                     "file_mean": float(all_lengths.mean()), "file_share_at_window": float((all_lengths == window).mean())}


def make_users(ids: list[str], lengths: np.ndarray, events: bool, seed: int) -> Users:
    """Users with these history lengths: distinct random items; with ``events``, each an event with an
    increasing Unix ``ts`` (gaps log-uniform from 1 s to MAX_GAP_S, the last at LAST_EVENT_TS) and a rating 1-5."""
    rng = np.random.default_rng(seed)
    histories: list[list[Any]] = []
    for n in lengths.tolist():
        items = [ids[i] for i in rng.choice(len(ids), n, replace=False)]
        if not events:
            histories.append(items)
            continue
        gaps = np.exp(rng.uniform(0.0, np.log(MAX_GAP_S), size=n - 1)).astype(np.int64)  # (n-1,) seconds between events
        before_last = np.concatenate([np.cumsum(gaps[::-1])[::-1], [0]])  # (n,) seconds from each event to the last
        times = (LAST_EVENT_TS - before_last).tolist()  # increasing Unix seconds
        ratings = rng.integers(1, RATING_LEVELS + 1, size=n).tolist()
        histories.append([{"item_id": i, "ts": t, "rating": r} for i, t, r in zip(items, times, ratings, strict=True)])
    return Users(histories, LAST_EVENT_TS + REQUEST_AFTER_S if events else None, lengths)


def top_ids(results: list) -> list[list[str]]:
    """Item ids of each ``Recommendation`` (in-process) or each JSON answer (HTTP), best first."""
    return [[row[0] for row in r] if not isinstance(r, dict) else [row["item_id"] for row in r["items"]] for r in results]


def compare(got: dict[int, list[str]], reference: list[list[str]]) -> dict[str, Any]:
    """Per user answered: the same top-k in the same order (share), and the share of the reference top-k found."""
    users = sorted(u for u in got if u < len(reference))
    if not users:
        return {"users": 0}
    same = [got[u] == reference[u] for u in users]
    found = [len(set(got[u]) & set(reference[u])) / max(len(reference[u]), 1) for u in users]
    return {"users": len(users), "identical_share": float(np.mean(same)), "overlap": float(np.mean(found))}


# ---------------------------------------------------------------------------------------------
# In process


def median_ms(fn: Callable[[], object], iters: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p90 = times[int(len(times) * 0.9) - 1 if len(times) > 1 else 0]
    return {"p50_ms": statistics.median(times), "min_ms": times[0], "p90_ms": p90}


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` that waits for the GPU before it returns (a kernel launch is not a step); `fn` itself on a CPU."""
    if device.type != "cuda":
        return fn

    def call() -> object:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def padded_inputs(rec: Recommender, users: Users, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Users 0..count-1 as ``Recommender.score_indices`` feeds its model: (B, L) item_idx right-padded to the
    window, and (B, L, C) context rows (built from the events by ``prepare``) or None for an ids-only model."""
    prepared = rec.prepare(users.histories[:count], request_times=users.request_times(count))
    items = torch.from_numpy(right_padded([p.indices for p in prepared], rec.max_seq_len)).to(rec.device)  # (B, L)
    if not rec.spec.config.uses_context:
        return items, None
    contexts = torch.from_numpy(right_padded([p.contexts for p in prepared], rec.max_seq_len)).to(rec.device)  # (B, L, C)
    return items, contexts


@torch.inference_mode()
def in_process(bundle_dir: Path, users: Users, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    bundle = load_bundle(bundle_dir)
    plain = Recommender(bundle, device)
    fast = fast_recommender(bundle, device)
    out: dict = {"threads": torch.get_num_threads(), "device": str(device)}
    for batch in (1, 32):
        histories, times = users.histories[:batch], users.request_times(batch)
        items, contexts = padded_inputs(plain, users, batch)  # (B, L), (B, L, C) | None
        iters = args.iters if batch == 1 else max(args.iters // 4, 3)
        step = synced(lambda: torch.topk(plain.model(items, contexts=contexts)[0], args.k), device)
        out[f"model_step_b{batch}"] = median_ms(step, iters)
        out[f"recommend_plain_b{batch}"] = median_ms(lambda: plain.recommend(histories, args.k, request_times=times), iters)
        out[f"recommend_fast_b{batch}"] = median_ms(lambda: fast.recommend(histories, args.k, request_times=times), iters)
        plain_top = top_ids(plain.recommend(histories, args.k, request_times=times))
        fast_top = top_ids(fast.recommend(histories, args.k, request_times=times))
        out[f"topk_fast_vs_plain_b{batch}"] = compare(dict(enumerate(fast_top)), plain_top)
        step_ms, plain_ms, fast_ms = (out[f"{name}_b{batch}"]["p50_ms"]
                                      for name in ("model_step", "recommend_plain", "recommend_fast"))
        print(f"in-process B={batch} (mean length {users.lengths[:batch].mean():.0f}): step {step_ms:.2f} ms, recommend plain "
              f"{plain_ms:.2f} ms, fast {fast_ms:.2f} ms; top-{args.k} fast = plain for "
              f"{out[f'topk_fast_vs_plain_b{batch}']['identical_share']:.0%}", flush=True)
    out["breakdown_b1"] = breakdown(fast, users, args)
    return out


@torch.inference_mode()
def breakdown(rec: Recommender, users: Users, args: argparse.Namespace) -> dict[str, float]:
    """Median ms of each stage of one request, user 0's (the same calls the service makes, timed apart)."""
    device = torch.device(args.device)
    model: FastModel = rec.model  # type: ignore[assignment]
    inner = model.runner if model.runner is not None else model.inner  # what the service runs
    history = users.histories[0]
    body = json.dumps(users.recommend_body(0, args.k)).encode()
    req = RecommendRequest.model_validate_json(body)
    entries = _entries(req.history)  # ids as sent, events as dicts: what the service hands the recommender
    (prepared,) = rec.prepare([entries], request_times=[req.request_time])
    items, contexts = padded_inputs(rec, users, 1)  # (1, L), (1, L, C) | None
    trimmed = model.trim(items, exact=not model.graph_shapes)  # (1, T): cut as the service cuts (CPU: to the history)
    trimmed_contexts = None if contexts is None else contexts[:, : trimmed.shape[1]]  # (1, T, C)
    user = inner.user_vectors(trimmed, trimmed_contexts)  # (1, D)
    logits = inner.item_logits(user)  # (1, N+1)
    result = rec.recommend([history], args.k, request_times=users.request_times(1))[0]
    payload = {"items": [{"item_id": i, "score": s, "title": t} for i, s, t in result.items], "fallback": False,
               "unknown_item_ids": [], "history_items_used": len(history), "k": args.k, "model_version": "1", "model": "x"}
    seen = torch.as_tensor(prepared.indices, device=logits.device)[None]  # (1, n) the history's item_idx
    it = args.iters

    def mask_topk() -> object:
        masked = logits.clone()
        masked.scatter_(1, seen, float("-inf"))
        return torch.topk(masked, args.k)

    def build_and_serialise() -> bytes:
        rows = rec._rows(np.arange(1, args.k + 1), [0.5] * args.k)
        return json.dumps({**payload, "items": [{"item_id": i, "score": s, "title": t} for i, s, t in rows]}).encode()

    stages = {
        "json_parse_validate": median_ms(lambda: RecommendRequest.model_validate(json.loads(body)), it * 5),
        "id_mapping": median_ms(lambda: rec.to_indices([_entries(req.history)]), it * 5),
        "prepare": median_ms(lambda: rec.prepare([_entries(req.history)], request_times=[req.request_time]), it * 5),
        "backbone_forward_pool": median_ms(synced(lambda: inner.user_vectors(trimmed, trimmed_contexts), device), it),
        "head_matmul": median_ms(synced(lambda: inner.item_logits(user), device), it),
        "mask_topk": median_ms(synced(mask_topk, device), it * 5),
        "build_and_serialise": median_ms(build_and_serialise, it * 5),
        "recommend_total": median_ms(lambda: rec.recommend([history], args.k, request_times=users.request_times(1)), it),
    }
    out = {k: round(v["p50_ms"], 4) for k, v in stages.items()}
    out["history_length"] = len(history)
    print("breakdown (ms, p50): " + ", ".join(f"{k} {v}" for k, v in out.items()), flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Over HTTP


class Service:
    """The real service in a subprocess (its own process group), stopped by PID."""

    def __init__(self, bundle_dir: Path, port: int, device: str, settings: dict[str, int], log: Path) -> None:
        cmd = [sys.executable, "-m", "lite_rec.serve.app", "--model", str(bundle_dir), "--device", device, "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
        for name, value in settings.items():
            cmd += ["--set", f"serve.{name}={value}"]
        self.port = port
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, process_group=0)
        deadline = time.monotonic() + 180
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited: {log.read_text()[-2000:]}")
                try:
                    status, data = self.request("GET", "/ready")
                    if status == 200:
                        self.ready: dict = json.loads(data)
                        return
                except OSError:
                    pass
                time.sleep(0.3)
            raise RuntimeError("service not ready in 180 s")
        except BaseException:
            self.stop()
            raise

    def request(self, method: str, path: str, body: bytes | None = None,
                conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
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


def answered(status: int, data: bytes, path: str) -> dict:
    """The JSON answer of a 200, else stop: a 4xx means the benchmark's body is wrong (the service says how)."""
    if status != 200:
        raise RuntimeError(f"{path} answered {status}: {data[:1000].decode(errors='replace')}")
    return json.loads(data)


def over_http(bundle_dir: Path, users: Users, reference: list[list[str]], threads: int, coalesce: int, args: argparse.Namespace,
              log_dir: Path) -> dict:
    """One service (``serve.torch_threads`` = threads, ``serve.coalesce_max_users`` = coalesce): sequential, concurrent, batch.
    ``reference``: the plain in-process recommender's top-k of users 0.. (the service's answers are compared with it)."""
    bodies = [json.dumps(users.recommend_body(u, args.k)).encode() for u in range(min(HTTP_USERS, len(users.histories)))]
    batch_bodies = {n: json.dumps(users.batch_body(n, args.k)).encode() for n in args.batch_users}
    settings = {"torch_threads": threads, "coalesce_max_users": coalesce}
    largest = max(len(b) for b in batch_bodies.values())
    if largest > ServeConfig().max_body_bytes:  # the default 1 MiB: raise it for this run, and say so in the report
        settings["max_body_bytes"] = largest + 1024
    if max(args.batch_users) > ServeConfig().max_batch_users:
        settings["max_batch_users"] = max(args.batch_users)
    svc = Service(bundle_dir, _free_port(), args.device, settings, log_dir / f"serve-t{threads}-c{coalesce}.log")
    try:
        out: dict = {"torch_threads": threads, "coalesce_max_users": coalesce, "serve_settings": settings,
                     "ready_context_fields": svc.ready.get("context_fields"), "ready_device": svc.ready.get("device"),
                     "body_bytes": {"recommend_median": int(np.median([len(b) for b in bodies])),
                                    **{f"batch_{n}": len(b) for n, b in batch_bodies.items()}}}
        if users.request_time is not None:  # a context model: ids alone are refused, naming the missing field
            ids_only = json.dumps({"history": [event["item_id"] for event in users.histories[0]], "k": args.k}).encode()
            status, data = svc.request("POST", "/recommend", ids_only)
            refusal = json.loads(data)
            out["ids_only_request"] = {"status": status, "error": refusal.get("error"), "field": refusal.get("field")}
            if status != 422 or refusal.get("error") != "missing_context":
                raise RuntimeError(f"a history of ids alone was not refused as missing_context: {status} {data[:500]!r}")
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=300)
        lat = []
        single_answers: dict[int, list[str]] = {}  # user -> the service's top-k item ids
        for i in range(args.http_requests + 10):
            t = time.perf_counter()
            status, data = svc.request("POST", "/recommend", bodies[i % len(bodies)], conn)
            if i >= 10:
                lat.append((time.perf_counter() - t) * 1000)
            answer = answered(status, data, "/recommend")
            single_answers.setdefault(i % len(bodies), top_ids([answer])[0])
        seq = {"requests": len(lat), "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
               "req_per_s": 1000 / float(np.mean(lat))}
        out["sequential"] = seq
        out["topk_vs_in_process"] = {"recommend": compare(single_answers, reference)}
        check = out["topk_vs_in_process"]["recommend"]
        print(f"HTTP t={threads} c={coalesce} sequential: p50 {seq['p50_ms']:.2f} ms, p99 {seq['p99_ms']:.2f} ms, "
              f"{seq['req_per_s']:.1f} req/s; top-{args.k} = in-process for {check['identical_share']:.0%} of "
              f"{check['users']} users", flush=True)
        for clients in args.clients:
            out[f"concurrent_{clients}"] = load(svc, bodies, clients, args.duration)
            r = out[f"concurrent_{clients}"]
            print(f"HTTP t={threads} c={coalesce} {clients} clients: {r['req_per_s']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms, {r['failed']} failed", flush=True)
        conn.close()  # idle through the load test: uvicorn drops keep-alive connections after 5 s
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=600)
        for batch, body in batch_bodies.items():
            first = answered(*svc.request("POST", "/recommend/batch", body, conn), "/recommend/batch")  # also the warm-up
            out["topk_vs_in_process"][f"batch_{batch}"] = compare(dict(enumerate(top_ids(first["results"]))), reference)
            timing = median_ms(lambda: svc.request("POST", "/recommend/batch", body, conn), max(args.iters // 8, 3), warmup=0)
            out[f"batch_{batch}"] = {**timing, "users_per_s": batch / timing["p50_ms"] * 1000,
                                     "mean_length": float(users.lengths[:batch].mean())}
            check = out["topk_vs_in_process"][f"batch_{batch}"]
            print(f"HTTP t={threads} c={coalesce} batch {batch}: {timing['p50_ms']:.1f} ms, "
                  f"{batch / timing['p50_ms'] * 1000:.0f} users/s; top-{args.k} = in-process for "
                  f"{check['identical_share']:.0%} of {check['users']} users", flush=True)
        conn.close()
        return out
    finally:
        svc.stop()


def load(svc: Service, bodies: list[bytes], clients: int, duration: float) -> dict:
    lat: list[float] = []
    failed = [0]
    stop_at = time.monotonic() + duration

    def client(seed: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=300)
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


@torch.inference_mode()
def reference_answers(bundle_dir: Path, users: Users, count: int, args: argparse.Namespace) -> list[list[str]]:
    """Top-k item ids of users 0..count-1 by the plain in-process recommender (fp32, full window), 32 at a time."""
    plain = Recommender(load_bundle(bundle_dir), torch.device(args.device))
    out: list[list[str]] = []
    for start in range(0, count, 32):
        chunk = users.histories[start : start + 32]
        out += top_ids(plain.recommend(chunk, args.k, request_times=users.request_times(len(chunk))))
    return out


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--profile", help="measure this shipped profile's model (configs/profiles/<name>.yaml: gpu, gpu-ids, ...); "
                                     "absent: the ids-only model of --backbones with a --history-item window")
    p.add_argument("--lengths", type=Path, help=".npy of per-user history lengths (e.g. data/ml1m-history-lengths.npy): "
                                                "requests carry histories of lengths drawn from it, capped at the window")
    p.add_argument("--device", default="cpu", help="in process and the service's --device (cpu, cuda, cuda:N)")
    p.add_argument("--items", type=int, help=f"catalog size (default {LEGACY_ITEMS}; {PROFILE_ITEMS} with --profile)")
    p.add_argument("--item-dim", type=int, default=384)
    p.add_argument("--history", type=int, default=20,
                   help="history length without --lengths; without --profile also the window")
    p.add_argument("--window", type=int,
                   help="model window (default: the profile's model.max_seq_len; without --profile --history)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--backbones", nargs="+", default=["t5-small", "lean"], help="in process, without --profile")
    p.add_argument("--http-backbone", default="t5-small",
                   help="the backbone served over HTTP without --profile (config default: t5-small)")
    p.add_argument("--http-configs", nargs="+", default=["1:16", "1:1"],
                   help="THREADS:COALESCE pairs (serve.torch_threads, serve.coalesce_max_users) measured over HTTP")
    p.add_argument("--inproc-threads", type=int, nargs="+", default=[1], help="torch threads for the in-process part")
    p.add_argument("--clients", type=int, nargs="+", default=[4])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each concurrent load")
    p.add_argument("--iters", type=int, default=40, help="timed calls at B=1 (B=32: a quarter; batch endpoint: an eighth, >= 3)")
    p.add_argument("--http-requests", type=int, default=200, help="sequential /recommend calls timed (after 10 untimed)")
    p.add_argument("--batch-users", type=int, nargs="+", default=[32, 256], help="users per /recommend/batch call")
    p.add_argument("--quick", action="store_true", help="smoke test: few iterations; with --profile a small model")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.http_requests, args.duration, args.http_configs = 4, 20, 2.0, ["1:16"]
        args.backbones, args.inproc_threads = [args.http_backbone], [1]
    config: ModelConfig | None = None  # the profile's model settings; None: the ids-only model of --backbones
    causal = False
    if args.profile is not None:
        try:
            config, causal = profile_config(args.profile, args.quick)  # with --quick: small layers
        except ConfigError as exc:  # an unknown profile names the shipped ones
            p.error(str(exc))
        if args.quick:
            args.items, args.item_dim, args.window = (QUICK_PROFILE[name] for name in ("items", "item_dim", "window"))
        args.window = args.window or config.max_seq_len
        config = dataclasses.replace(config, max_seq_len=args.window)
    else:
        args.window = args.window or args.history
    args.items = args.items or (PROFILE_ITEMS if config is not None else LEGACY_ITEMS)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("CUDA is not available here; use --device cpu")
    labels = [args.profile] if config is not None else list(args.backbones)  # the models measured in process
    http_label = args.profile if config is not None else args.http_backbone  # the model served over HTTP
    kind = "profile" if config is not None else "backbone"
    pool = max(HTTP_USERS, 32, *args.batch_users)  # users 0..pool-1: every section's requests are among them
    lengths, length_report = draw_lengths(args, args.window, pool)  # (pool,)
    report: dict = {"cpu": os.cpu_count(), "torch": torch.__version__, "config": {k: str(v) for k, v in vars(args).items()},
                    "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        bundles, report["model"] = build_bundles(args, config, causal, labels + [http_label], root)
        fields = report["model"]["context_fields"]
        ids = load_bundle(bundles[http_label]).items["item_id"].tolist()
        users = make_users(ids, lengths, events=bool(fields), seed=7)
        report["requests"] = {
            "lengths": {**length_report, "users": pool, "median": float(np.median(lengths)), "mean": float(lengths.mean()),
                        "share_at_window": float((lengths == args.window).mean())},
            "format": ('events {"item_id", "ts", "rating"} (ts increasing Unix seconds, rating 1-5) + request_time '
                       f"{REQUEST_AFTER_S} s after the last event" if fields else "item ids"),
            "example": users.recommend_body(0, args.k) | {"history": users.histories[0][:3]}}
        print(f"model: {kind} {http_label}, window {args.window}, {args.items} items, context fields {fields or 'none'}; "
              f"requests: {length_report['source']}, median length {np.median(lengths):.0f}", flush=True)
        for label in labels:
            for threads in args.inproc_threads:
                torch.set_num_threads(threads)
                print(f"== in process, {kind} {label}, torch threads {threads}", flush=True)
                report[f"in_process_{label}_t{threads}"] = in_process(bundles[label], users, args)
        reference = reference_answers(bundles[http_label], users, min(HTTP_USERS, pool), args)
        for pair in args.http_configs:
            threads, coalesce = (int(x) for x in pair.split(":"))
            print(f"== HTTP, {kind} {http_label}, torch threads {threads}, coalesce {coalesce}", flush=True)
            report[f"http_t{threads}_c{coalesce}"] = over_http(bundles[http_label], users, reference, threads, coalesce, args,
                                                               root)
    report["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
