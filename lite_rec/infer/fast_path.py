"""The inference fast path: pick the device, then make one scoring step as cheap as it can be.

Why a module of its own: serving answers one user at a time in milliseconds, so the cost that
matters is not FLOPs (one pass over ~20 item vectors plus one matrix product, Eq. 4-5 of the paper)
but everything around them: Python dispatch and kernel launches on a GPU, thread oversubscription
and wasted padding on a CPU. What this module does about it, and what it must never change:

- **Same answers.** :class:`FastModel` is a drop-in for :class:`~lite_rec.model.rec_llm.LiteRecModel` at
  inference (``forward(items (B, L)) -> (logits (B, N+1), None)``), so the shared
  :class:`~lite_rec.infer.recommender.Recommender` keeps every rule (ids, window, masking, fallback)
  and the fast path only changes *how* logits are computed. On CPU they are fp32 and give the
  same top-k as the plain model; bf16 on CUDA may reorder near-ties.
- **Length buckets.** Histories arrive right-padded to the model window; trailing columns that
  are padding in every row are cut down to the next length bucket. Padding keys are masked and
  positions are relative (``encoder_backbone``), so this changes no score, only the work.
- **The lean plan.** Lean and HF-T5 backbones run as :class:`~lite_rec.infer.lean_runner.LeanRunner`,
  the same function with fewer kernels (precomputed item table, cached position bias, fused
  norms and residuals); other HF encoders run through the model itself.
- **CUDA: bf16 + CUDA graphs.** The backbone's weights become bf16 (the head stays fp32: bf16
  would tie thousands of item scores, see ``LiteRecModel.item_logits``), and one CUDA graph is
  captured per (batch bucket, length bucket). A request is padded up to its bucket (rows of
  padding score nothing and are sliced away) and replayed: ~80 kernel launches become one.
- **CPU.** ``inference_mode`` (no autograd bookkeeping) and an explicit torch thread count: on a
  small machine shared with the HTTP workers, fewer intra-op threads avoid spinning barriers.

Imports only torch and torch-only ``lite_rec`` modules (``model``, ``encoder_backbone``,
``lean_runner``), so the GPU benchmark runs where only torch and transformers are installed
(``benchmarks/bench_serve_gpu.py``).
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
from lite_rec.infer.lean_runner import LeanRunner, supports
from lite_rec.model.backbone import RMSNorm
from lite_rec.model.rec_llm import LiteRecModel
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
    length_buckets: tuple[int, ...] = (5, 10, 20)  # clipped to the model window, which is always one
    compile: bool = False  # torch.compile the step before capture (CUDA; slow to start)
    lean_plan: bool = True  # lean/T5 backbones run as lean_runner.LeanRunner (same function, fewer kernels)
    cuda_attention: str = "auto"  # plan attention on CUDA: "auto" (triton where it can run, else bmm), "bmm", "sdpa" or "triton"
    cuda_fused_relu: bool = True  # plan FFN ReLU as a cuBLASLt GEMM epilogue on CUDA


def resolve_cuda_attention(choice: str, device: torch.device, model: LiteRecModel) -> str:
    """The plan's attention on a CUDA device. ``auto`` picks the fused Triton kernel (the fastest
    measured on an H100, docs/benchmarks.md) where it runs (``triton_attention.check_runs``: triton
    importable, a head size it tiles, a trial launch that builds the kernel), otherwise ``bmm``
    with the reason logged. An explicit choice is passed through; an explicit ``triton`` that
    cannot run fails loudly in ``LeanRunner``."""
    if choice != "auto":
        return choice
    backbone = model.spec.backbone  # sizes from the spec: no T5-to-lean weight mapping just to ask
    try:
        from lite_rec.infer import triton_attention

        triton_attention.check_runs(device, backbone.d_model, backbone.n_heads)
    except Exception as exc:  # noqa: BLE001 - any reason the kernel cannot run means: serve with bmm
        log.warning("cuda_attention=auto: using bmm attention (%s: %s)", type(exc).__name__, exc)
        return "bmm"
    return "triton"


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
    next replay must copy them (:class:`FastModel` does, under its lock).
    """

    def __init__(self, fn: Callable[[torch.Tensor], object], example: torch.Tensor, warmup: int = 3) -> None:
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
        with torch.inference_mode(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_output = fn(self.static_input)

    def __call__(self, x: torch.Tensor | None = None) -> object:
        """Replay (after copying `x` into the static input, when given); returns the static output."""
        with torch.inference_mode():
            if x is not None:
                self.static_input.copy_(x)
            self.graph.replay()
        return self.static_output


class FastModel(nn.Module):
    """Inference-only twin of a :class:`LiteRecModel` (see the module docstring)."""

    def __init__(self, model: LiteRecModel, device: torch.device | str = "cpu", options: FastPathOptions = FastPathOptions()) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.options = options
        self.inner = model.to(self.device).eval()
        self.spec: ModelSpec = model.spec
        window = self.spec.config.max_seq_len
        self.length_buckets = tuple(sorted({min(b, window) for b in options.length_buckets} | {window}))
        self.batch_buckets = tuple(sorted(set(options.batch_buckets)))
        on_cuda = self.device.type == "cuda"
        self.bf16 = bool(options.bf16 and on_cuda)
        self.runner: nn.Module | None = None
        if options.lean_plan and supports(self.inner):
            # on CUDA: measured fastest on an H100 (docs/benchmarks.md); on CPU: SDPA, plain ReLU
            self.runner = LeanRunner(
                self.inner, torch.bfloat16 if self.bf16 else torch.float32, fused_relu=on_cuda and options.cuda_fused_relu,
                attention=resolve_cuda_attention(options.cuda_attention, self.device, self.inner) if on_cuda else "sdpa",
            )
        elif self.bf16:
            cast_backbone(self.inner, torch.bfloat16)
        self.attention = self.runner.attention if self.runner is not None else "module"  # what actually runs
        if options.compile and on_cuda:
            if self.runner is not None:
                self.runner = torch.compile(self.runner, dynamic=False)
            else:
                self.inner.backbone = torch.compile(self.inner.backbone, dynamic=False)
        self._graphs: dict[tuple[int, int], GraphedStep] = {}
        self._lock = threading.Lock()  # one replay at a time: the static buffers are shared
        self.graph_error: str | None = None
        if on_cuda and options.cuda_graphs:
            self._capture_all()

    # -----------------------------------------------------------------------------------------

    def _logits(self, items: torch.Tensor) -> torch.Tensor:
        if self.runner is not None:
            return self.runner(items)  # (B, N+1) fp32
        return self.inner(items)[0]  # (B, N+1) fp32

    def _capture_all(self) -> None:
        """One graph per (batch, length) bucket; on any failure serve eagerly and say why."""
        try:
            for t in self.length_buckets:
                for b in self.batch_buckets:
                    example = torch.zeros(b, t, dtype=torch.long, device=self.device)  # (b, t)
                    example[:, 0] = 1  # one real item per row: the shape is what gets captured
                    self._graphs[(b, t)] = GraphedStep(self._logits, example)
        except RuntimeError as exc:  # a backbone op that cannot be captured (host sync, ...)
            self._graphs.clear()
            self.graph_error = f"{type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed, serving eagerly: %s", self.graph_error)

    @property
    def graph_shapes(self) -> list[tuple[int, int]]:
        """Captured (batch, length) buckets; empty on CPU or when capture failed."""
        return sorted(self._graphs)

    def trim(self, items: torch.Tensor) -> torch.Tensor:
        """(B, L) right-padded -> (B, T) with T the smallest length bucket >= the longest history."""
        longest = int((items > 0).sum(1).max()) if items.numel() else 1
        t = bucket_for(max(longest, 1), self.length_buckets) or items.shape[1]
        return items[:, :t] if t < items.shape[1] else items

    @torch.inference_mode()
    def forward(self, items: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """Inference logits (B, N+1) for right-padded item_idx histories (B, L)."""
        if targets is not None:
            raise ValueError("FastModel is inference-only; train the LiteRecModel itself")
        items = self.trim(items.to(self.device))  # (B, T)
        if not self._graphs:
            return self._logits(items), None
        chunk = self.batch_buckets[-1]
        parts = [self._replay(items[i : i + chunk]) for i in range(0, items.shape[0], chunk)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), None

    def _replay(self, items: torch.Tensor) -> torch.Tensor:
        b, t = items.shape
        bucket = bucket_for(b, self.batch_buckets)
        graph = self._graphs.get((bucket, t)) if bucket is not None else None
        if graph is None:  # a length no bucket covers (cannot happen with the window as a bucket)
            return self._logits(items)
        with self._lock:
            graph.static_input.zero_()  # padding rows: all item_idx 0, sliced away below
            graph.static_input[:b].copy_(items)
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
