"""The inference fast path: pick the device, then make one scoring step as cheap as it can be.

Why a module of its own: serving answers one user at a time in milliseconds, and batch scoring
all users at their own history lengths (up to the 200-item window the shipped model reads). At
short windows the cost is Python dispatch and kernel launches on a GPU and thread
oversubscription on a CPU; at long ones it is the encoder's work itself. What this module does
about it, and what it must never change:

- **Same answers.** :class:`FastModel` is a drop-in for :class:`~lite_rec.model.rec_llm.LiteRecModel` at
  inference (``forward(items (B, L), contexts=..., history=...) -> (logits (B, N+1), None)``), so
  the shared :class:`~lite_rec.infer.recommender.Recommender` keeps every rule (ids, window,
  masking, fallback) and the fast path only changes *how* logits are computed. On CPU they are
  fp32 and give the same top-k as the plain model; bf16 on CUDA may reorder near-ties.
- **Length buckets.** Histories arrive right-padded to the model window; trailing columns that
  are padding in every row are cut down to the next length bucket (with CUDA graphs; to the
  longest history without them). Padding keys are masked and positions are relative
  (``backbone``), so this changes no score, only the work. A batch that is not right-padded is
  scored by the model itself (logged once).
- **The lean plan.** Lean and HF-T5 backbones run as :class:`~lite_rec.infer.lean_runner.LeanRunner`,
  the same function with less work: with ``pooling: last`` the top layer computes the last
  position only, a causal batch shares one mask, attention runs in fused kernels (SDPA; the
  Triton kernel for short windows), and the per-item contexts (``model.time_gaps`` / ``ratings``
  / ``time_bias`` / ``query_time``) are read inside the plan. Other HF encoders run through the
  model itself (contexts too; logged once).
- **CUDA: bf16 + CUDA graphs.** The backbone's weights become bf16 (the head stays fp32: bf16
  would tie thousands of item scores, see ``LiteRecModel.item_logits``), and one CUDA graph is
  captured per (batch bucket, length bucket), all in one memory pool. A request is padded up to
  its bucket (rows of padding score nothing and are sliced away) and replayed: ~60 kernel
  launches become one. Items and contexts travel as one packed (B, T, 1 + C) graph input.
- **CPU.** ``inference_mode`` (no autograd bookkeeping) and an explicit torch thread count: on a
  small machine shared with the HTTP workers, fewer intra-op threads avoid spinning barriers.

Imports only torch and torch-only ``lite_rec`` modules (``model``, ``lean_runner``), so the GPU
benchmarks run where only torch and transformers are installed (``benchmarks/bench_serve_gpu.py``,
``benchmarks/bench_serve_suite.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from lite_rec.core.devices import resolve_device
from lite_rec.infer.lean_runner import LeanRunner, check_contexts, supports
from lite_rec.model.backbone import RMSNorm
from lite_rec.model.context import CONTEXT_COLUMNS
from lite_rec.model.rec_llm import LiteRecModel
from lite_rec.model.scoring import add_history_logit
from lite_rec.model.spec import ModelSpec

if TYPE_CHECKING:  # the recommender needs pandas; the fast path itself must not
    from lite_rec.infer.bundle import Bundle
    from lite_rec.infer.recommender import Recommender

__all__ = [
    "FastModel",
    "FastPathOptions",
    "GraphedStep",
    "bucket_for",
    "cast_backbone",
    "choose_device",
    "configure_threads",
    "fast_recommender",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPathOptions:
    """How to run the model (mirrors the inference fields of ``ServeConfig``)."""

    bf16: bool = True  # CUDA only: backbone in bf16
    cuda_graphs: bool = True  # CUDA only: one graph per (batch, length) bucket
    batch_buckets: tuple[int, ...] = (1, 8, 32, 128)  # graph batch sizes (CUDA)
    # history lengths a batch is cut to (CUDA graphs); clipped to the model window, which is always one.
    # Powers of two: ML-1m users' windows spread from 20 to 200 items
    length_buckets: tuple[int, ...] = (8, 16, 32, 64, 128)
    compile: bool = False  # torch.compile the step before capture (CUDA; slow to start)
    lean_plan: bool = True  # lean/T5 backbones run as lean_runner.LeanRunner (same function, less work)
    # plan attention on CUDA: "auto" (Triton kernels up to 128 items where they run, SDPA's fused kernels above:
    # lean_runner.LeanRunner), "sdpa", "bmm", "triton" or "flash"; on CPU always SDPA
    cuda_attention: str = "auto"
    cuda_fused_relu: bool = True  # plan FFN ReLU as a cuBLASLt GEMM epilogue on CUDA
    last_only: bool = True  # pooling=last: the top layer computes the last position only (LeanRunner)


def resolve_cuda_attention(choice: str, device: torch.device, model: LiteRecModel) -> str:
    """The plan's attention on a CUDA device. ``auto`` stays ``auto`` (``LeanRunner``: the Triton kernels
    up to ``FLASH_MAX_LEN`` items, SDPA above) where the Triton kernel runs
    (``triton_attention.check_runs``: triton importable, a head size it tiles, a trial launch that
    builds the kernel), otherwise ``sdpa`` with the reason logged. An explicit choice is passed
    through; an explicit ``triton`` that cannot run fails loudly in ``LeanRunner``."""
    if choice != "auto":
        return choice
    backbone = model.spec.backbone  # sizes from the spec: no T5-to-lean weight mapping just to ask
    try:
        from lite_rec.infer import triton_attention

        triton_attention.check_runs(device, backbone.d_model, backbone.n_heads)
    except Exception as exc:  # noqa: BLE001 - any reason the kernel cannot run means: serve with SDPA
        log.warning("cuda_attention=auto: using sdpa attention at every length (%s: %s)", type(exc).__name__, exc)
        return "sdpa"
    return "auto"


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else CPU; an explicit CUDA device must exist."""
    return resolve_device(name)


def configure_threads(threads: int) -> int:
    """Set torch's intra-op CPU threads (0 keeps torch's default); returns the count in use."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket >= n, or None when n is larger than every bucket."""
    for b in sorted(buckets):
        if b >= n:
            return b
    return None


class _CastInput(nn.Module):
    """Feeds a bf16 backbone from the fp32 item inputs; its outputs are pooled in fp32 again."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = backbone
        self.dtype = dtype

    def forward(self, x: torch.Tensor, real: torch.Tensor, causal: bool = False) -> torch.Tensor:
        return self.inner(x.to(self.dtype), real, causal)  # (B, T, D) in self.dtype


def cast_backbone(model: LiteRecModel, dtype: torch.dtype = torch.bfloat16) -> LiteRecModel:
    """Store the backbone's weights in `dtype` (in place). Item inputs and the head stay fp32.

    Casting the weights once beats autocast, which would re-cast every weight on every call
    (inside a CUDA graph: two dozen extra copy kernels per step).
    """
    if not isinstance(model.backbone, _CastInput):
        backbone = model.backbone.to(dtype)
        for module in backbone.modules():
            if isinstance(module, RMSNorm):
                module.float()  # the lean norm computes in fp32: an fp32 weight keeps its kernel fused
        model.backbone = _CastInput(backbone, dtype)
    return model


class GraphedStep:
    """A function of one tensor, captured in a CUDA graph for one static input shape.

    ``fn(static_input)`` is run a few times on a side stream (warm-up: lazy inits, cuBLAS
    workspaces, compile), then captured; :meth:`__call__` copies new input into the static
    buffer and replays. The outputs are static buffers too: callers that keep them past the
    next replay must copy them (:class:`FastModel` does, under its lock). ``pool``: a memory pool
    shared with other graphs that are never replayed at the same time (``FastModel``'s buckets:
    one pool holds the scratch of the largest bucket, not the sum of all).
    """

    def __init__(self, fn: Callable[[torch.Tensor], object], example: torch.Tensor, warmup: int = 3,
                 pool: object | None = None) -> None:
        self.fn = fn  # keeps the captured weights alive: a replay reads their memory, not a copy
        self.static_input = example.clone()
        stream = torch.cuda.Stream(device=example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the service captures a new version in the background while request
        # threads keep launching work for the old one; that work must not break the capture
        with torch.inference_mode(), torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.static_output = fn(self.static_input)

    def __call__(self, x: torch.Tensor | None = None) -> object:
        """Replay (after copying `x` into the static input, when given); returns the static output."""
        with torch.inference_mode():
            if x is not None:
                self.static_input.copy_(x)
            self.graph.replay()
        return self.static_output


class FastModel(nn.Module):
    """Inference-only twin of a :class:`LiteRecModel` (see the module docstring).

    ``forward(items (B, L), contexts=(B, L, C) | None, history=(B, H) | None) -> (logits (B, N+1), None)``
    as ``LiteRecModel.forward`` at inference; items right-padded (a batch that is not is scored
    by the model itself, logged once). Items (and contexts) may come on the host: the length
    bucket is read there, with no device sync, before they are copied to the device.
    """

    def __init__(self, model: LiteRecModel, device: torch.device | str = "cpu", options: FastPathOptions = FastPathOptions()) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.options = options
        self.inner = model.to(self.device).eval()
        self.spec: ModelSpec = model.spec
        cfg = self.spec.config
        window = cfg.max_seq_len
        self.length_buckets = tuple(sorted({min(b, window) for b in options.length_buckets} | {window}))
        self.batch_buckets = tuple(sorted(set(options.batch_buckets)))
        self.uses_context = cfg.uses_context
        self.history_value = float(model.history_logit().detach()) if cfg.history_logit else None
        on_cuda = self.device.type == "cuda"
        self.bf16 = bool(options.bf16 and on_cuda)
        self.runner: nn.Module | None = None
        self._said: set[str] = set()
        if options.lean_plan and supports(self.inner):
            # on CUDA: measured fastest on an H100 (docs/benchmarks.md); on CPU: SDPA, plain ReLU
            self.runner = LeanRunner(
                self.inner, torch.bfloat16 if self.bf16 else torch.float32, fused_relu=on_cuda and options.cuda_fused_relu,
                attention=resolve_cuda_attention(options.cuda_attention, self.device, self.inner) if on_cuda else "sdpa",
                last_only=options.last_only,
            )
        else:
            if self.uses_context:
                self._say(f"backbone kind {self.spec.backbone.kind!r} has no lean plan: the model itself reads the contexts")
            if self.bf16:
                cast_backbone(self.inner, torch.bfloat16)
        self.attention = self.runner.attention if self.runner is not None else "module"  # what actually runs
        if options.compile and on_cuda:
            if self.runner is not None:
                self.runner = torch.compile(self.runner, dynamic=False)
            else:
                self.inner.backbone = torch.compile(self.inner.backbone, dynamic=False)
        self._graphs: dict[tuple[int, int], GraphedStep] = {}
        self._lock = threading.Lock()  # one replay at a time: the static buffers (and the graphs' pool) are shared
        self.graph_error: str | None = None
        if on_cuda and options.cuda_graphs:
            self._capture_all()

    # -----------------------------------------------------------------------------------------

    def _say(self, message: str) -> None:
        """Log a fallback once per model."""
        if message not in self._said:
            self._said.add(message)
            log.warning("fast path: %s", message)

    def _logits(self, packed: torch.Tensor) -> torch.Tensor:
        """(B, T) items, or (B, T, 1 + C) items and contexts packed in one tensor (one graph input) -> (B, N+1) fp32."""
        items, contexts = (packed[..., 0], packed[..., 1:]) if packed.dim() == 3 else (packed, None)
        if self.runner is not None:
            return self.runner(items, contexts)
        return self.inner(items, contexts=contexts)[0]

    def _capture_all(self) -> None:
        """One graph per (batch, length) bucket, one memory pool; on any failure serve eagerly and say why."""
        width = 1 + CONTEXT_COLUMNS if self.uses_context else 0
        pool = torch.cuda.graph_pool_handle()
        try:
            for t in self.length_buckets:
                for b in self.batch_buckets:
                    example = torch.zeros((b, t, width) if width else (b, t), dtype=torch.long, device=self.device)
                    example[:, 0, ...] = 1  # one real item per row (context rows of ones): the shape is what gets captured
                    self._graphs[(b, t)] = GraphedStep(self._logits, example, pool=pool)
        except RuntimeError as exc:  # a backbone op that cannot be captured (host sync, ...)
            self._graphs.clear()
            self.graph_error = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed, serving eagerly: %s", self.graph_error)

    @property
    def graph_shapes(self) -> list[tuple[int, int]]:
        """Captured (batch, length) buckets; empty on CPU or when capture failed."""
        return sorted(self._graphs)

    def trim(self, items: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(B, L) right-padded -> (B, T) with T the smallest length bucket >= the longest history
        (``exact``: T = the longest history, where no graph needs a fixed shape)."""
        return items[:, : self._length(items, exact)[0]]

    def _length(self, items: torch.Tensor, exact: bool) -> tuple[int, bool]:
        """(T to cut to, whether every row is right-padded); one host sync for both."""
        if not items.numel():
            return items.shape[1], True
        real = items > 0
        count = real.sum(1)  # (B,)
        stray = real & (torch.arange(items.shape[1], device=items.device) >= count[:, None])  # a real item after padding
        longest, misplaced = torch.stack([count.max(), stray.any().long()]).tolist()
        longest = max(int(longest), 1)
        t = longest if exact else (bucket_for(longest, self.length_buckets) or items.shape[1])
        return min(t, items.shape[1]), not misplaced

    @torch.inference_mode()
    def forward(self, items: torch.Tensor, targets: torch.Tensor | None = None, *, contexts: torch.Tensor | None = None,
                history: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Inference logits (B, N+1) for right-padded item_idx histories (B, L) (and their contexts
        (B, L, C) when the model reads them); with ``history`` (B, H) the learned history score is
        added to those items, as ``LiteRecModel.forward`` does."""
        if targets is not None:
            raise ValueError("FastModel is inference-only; train the LiteRecModel itself")
        if self.uses_context:
            check_contexts(items, contexts)
        else:
            contexts = None  # the model reads none (as LiteRecModel ignores them)
        # the length bucket is read where the items are: items still on the host cost no device sync
        t, right_padded = self._length(items, exact=not self._graphs)
        if not right_padded:  # length buckets and the plan's shared causal mask read right padding
            self._say("a batch is not right-padded (real items first): the model itself scores it")
            items = items.to(self.device)
            contexts = None if contexts is None else contexts.to(self.device, torch.long)
            logits = self.inner(items, contexts=contexts)[0]
        else:
            items = items[:, :t].to(self.device)  # (B, T)
            packed = items if contexts is None else torch.cat([items[..., None], contexts[:, :t].to(self.device, torch.long)], -1)
            if not self._graphs:
                logits = self._logits(packed)
            else:
                chunk = self.batch_buckets[-1]
                parts = [self._replay(packed[i : i + chunk]) for i in range(0, packed.shape[0], chunk)]
                logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        if history is not None and self.history_value is not None:
            logits = add_history_logit(logits, items, torch.tensor(self.history_value, device=self.device),
                                       history=history.to(self.device))
        return logits, None

    def _replay(self, packed: torch.Tensor) -> torch.Tensor:
        b, t = packed.shape[:2]
        bucket = bucket_for(b, self.batch_buckets)
        graph = self._graphs.get((bucket, t)) if bucket is not None else None
        if graph is None:  # a length no bucket covers (cannot happen with the window as a bucket)
            return self._logits(packed)
        with self._lock:
            graph.static_input[:b].copy_(packed)
            if b < bucket:
                graph.static_input[b:].zero_()  # padding rows: all item_idx 0, sliced away below
            logits = graph()  # (bucket, N+1), a static buffer
            return logits[:b].clone()  # type: ignore[index]


def fast_recommender(
    bundle: "Bundle", device: torch.device | str = "auto", options: FastPathOptions = FastPathOptions(), threads: int = 0
) -> "Recommender":
    """A :class:`Recommender` over `bundle` whose model is the :class:`FastModel` twin.

    Every request rule stays in ``Recommender``; only its model is swapped (the same interface),
    so the service, batch scoring and the pyfunc share one answer per history.
    """
    from lite_rec.infer.recommender import Recommender  # pandas lives there; keep this module torch-only

    dev = choose_device(str(device)) if isinstance(device, str) else torch.device(device)
    if dev.type == "cpu":
        configure_threads(threads)
    rec = Recommender(bundle, dev)
    rec.model = FastModel(rec.model, dev, options)  # type: ignore[assignment]
    return rec
