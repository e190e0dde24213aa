"""Triton kernels of :class:`~lite_rec.infer.lean_runner.LeanRunner`: the whole self-attention of one encoder layer.

Two attention kernels, one contract (inputs read in place from the QKV GEMM's output, the mask
applied inside, the output written in the layout the output projection reads), and two that
prepare their inputs for a model that reads request-time context:

- :func:`attention`: one program per (user, head) holding the whole ``T x T`` score tile: the
  fewest launches for short windows (20 items), but its registers spill past ~64 items;
- :func:`flash_attention`: one program per (block of 64 queries, user, head) that streams key
  blocks with an online softmax (flash-style tiling) and skips the key blocks a causal model never
  reads: the kernel for long windows. It reads one ``(H, T, T)`` bias for all users or, for
  ``model.time_bias``, one per user;
- :func:`user_bias`: each user's ``(B, H, T, T)`` bias, the position bias plus the time bias of
  every pair of items, in the activations' dtype, built once per step and read by every layer;
- :func:`embedding_sum`: the inputs of a model with context embeddings (item row + context rows,
  summed in fp32, cast once) in one pass.

The rest of this docstring describes :func:`attention`; :func:`flash_attention` differs where said.

Why: at serving sizes (32 users x 21 items, 8 heads of 64) the attention's arithmetic is tiny and
its cost in the plan is kernel count: a permute copy of Q/K/V, the score GEMM with the bias, the
softmax, the value GEMM and a transpose copy back, plus the per-step mask (``masked_fill`` of the
bias). This kernel does all of it in one launch per layer, one program per (user, head):

- it reads Q, K and V straight from the QKV GEMM's output ``(B*T, 3D)`` through strides (no copy);
- it reads the per-length relative-position bias ``(1 or H, T, T)`` and the ``(B, T)`` padding and
  applies the mask itself, so the ``(B, H, T, T)`` masked bias is never materialised;
- softmax runs in fp32 on the fp32 scores; the output is written as ``(B*T, D)``, row ``b*T + t``,
  columns ``h*dk : (h+1)*dk``: the layout the output projection (``addmm``) reads with no copy.

The mask is ``attention_allowed``'s (see ``LeanRunner._blocked``): a key is blocked when it is
padding (or in the future, when causal), except that a query always sees itself, padding or not.

Only stable ``triton.language`` calls are used (load/store/dot/max/sum/exp/where/arange/program_id).
Triton is imported here, and this module only where ``attention="triton"`` is asked for. On a CPU
the kernel runs only under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
check it. The kernel is decorated with ``triton.jit`` at its first launch, not at import: the
decorator picks compiled or interpreted from ``TRITON_INTERPRET`` at that moment, so the mode is
what the environment says when the kernel runs, whoever imported this module first.
"""

from __future__ import annotations

import functools
import os

import torch

from lite_rec.model.context import TIME_BUCKETS

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("attention='triton' needs the triton package (the version your torch pins, e.g. "
                      "triton==3.7.1 for torch 2.13); use attention='bmm' or 'sdpa' without it") from exc

__all__ = ["attention", "check_runs", "check_supported", "embedding_sum", "flash_attention", "interpreted", "user_bias"]

MIN_BLOCK = 16  # tl.dot needs every dimension >= 16


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _kernel(interpret: bool, name: str = "tile"):  # noqa: ARG001 - the cache key: one decoration per mode
    """``triton.jit`` of a kernel ("tile", "flash", "user_bias" or "embed"), decorated now, in the mode the
    environment asks for."""
    return triton.jit({"tile": _attention_kernel, "flash": _flash_kernel, "user_bias": _user_bias_kernel,
                       "embed": _embed_kernel}[name])


def _attention_kernel(qkv_ptr, bias_ptr, pad_ptr, out_ptr, qk_scale, T, bias_head_stride,
                      H: tl.constexpr, DK: tl.constexpr, BLOCK_T: tl.constexpr, CAUSAL: tl.constexpr,
                      FP32_DOT: tl.constexpr):
    """One (user b, head h): out[b*T + i, h*DK + d] = softmax_j(scale * q_i.k_j + bias[h, i, j] | mask) @ v."""
    b = tl.program_id(0) // H
    h = tl.program_id(0) % H
    d_model = H * DK
    rows = tl.arange(0, BLOCK_T)  # query positions i
    keys = tl.arange(0, BLOCK_T)  # key positions j
    dims = tl.arange(0, DK)
    row_ok = rows < T
    key_ok = keys < T

    head = qkv_ptr + (b * T) * (3 * d_model) + h * DK  # q of (b, h, t=0); k is D columns right, v 2D
    q = tl.load(head + rows[:, None] * (3 * d_model) + dims[None, :], mask=row_ok[:, None], other=0.0)  # (BLOCK_T, DK)
    k_t = tl.load(head + d_model + keys[None, :] * (3 * d_model) + dims[:, None], mask=key_ok[None, :], other=0.0)  # (DK, BLOCK_T)
    v = tl.load(head + 2 * d_model + keys[:, None] * (3 * d_model) + dims[None, :], mask=key_ok[:, None], other=0.0)  # (BLOCK_T, DK)

    inside = row_ok[:, None] & key_ok[None, :]  # (BLOCK_T, BLOCK_T)
    bias = tl.load(bias_ptr + h * bias_head_stride + rows[:, None] * T + keys[None, :], mask=inside, other=0.0)
    # FP32_DOT: operands as fp32 with exact (IEEE) products, for fp32 activations (no TF32) and for
    # the interpreter, whose dot misreads bf16 operands; else bf16 tensor cores, fp32 accumulation
    if FP32_DOT:
        qk = tl.dot(q.to(tl.float32), k_t.to(tl.float32), input_precision="ieee")
    else:
        qk = tl.dot(q, k_t)
    scores = qk * qk_scale + bias.to(tl.float32)  # (BLOCK_T, BLOCK_T) fp32

    pad = tl.load(pad_ptr + b * T + keys, mask=key_ok, other=1) != 0  # (BLOCK_T,) key is padding
    future = (keys[None, :] > rows[:, None]) & CAUSAL  # (BLOCK_T, BLOCK_T), all False unless causal
    # a query always sees itself; block-padding keys (j >= T) never; block-padding query rows
    # (i >= T, not stored) see the real keys, so no row is all -inf
    blocked = ((pad[None, :] | future) & (keys[None, :] != rows[:, None]) & row_ok[:, None]) | (~key_ok[None, :])
    scores = tl.where(blocked, float("-inf"), scores)

    top = tl.max(scores, axis=1)  # (BLOCK_T,) finite: every row sees at least one key
    p = tl.exp(scores - top[:, None])
    p = p / tl.sum(p, axis=1)[:, None]  # softmax in fp32
    if FP32_DOT:
        out = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")  # (BLOCK_T, DK) fp32
    else:
        out = tl.dot(p.to(v.dtype), v)  # (BLOCK_T, DK) fp32
    tl.store(out_ptr + (b * T + rows[:, None]) * d_model + h * DK + dims[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None])


def _user_bias_kernel(times_ptr, position_ptr, table_ptr, out_ptr, T, H: tl.constexpr, BLOCK_M: tl.constexpr,
                      BLOCK_T: tl.constexpr, MAX_BUCKET: tl.constexpr, N_BUCKETS: tl.constexpr):
    """Rows m*BLOCK_M.. of user b, every head: out[b, h, i, j] = position[h, i, j] + table[h, bucket(|t_i - t_j|)],
    summed in fp32, stored in out's dtype."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # query positions i
    keys = tl.arange(0, BLOCK_T)  # key positions j
    row_ok = rows < T
    key_ok = keys < T
    inside = row_ok[:, None] & key_ok[None, :]
    query_times = tl.load(times_ptr + b * T + rows, mask=row_ok, other=0)  # (BLOCK_M,) int64 Unix seconds
    key_times = tl.load(times_ptr + b * T + keys, mask=key_ok, other=0)  # (BLOCK_T,)
    # context.time_bucket in integer steps (exact where a float log2 rounds near powers of two): 0 for 0 s,
    # else 1 + floor(log2(seconds)) found as the top bit by a binary search, at most MAX_BUCKET
    seconds = tl.abs(query_times[:, None] - key_times[None, :])  # (BLOCK_M, BLOCK_T) int64
    x = tl.minimum(seconds, 2147483647).to(tl.int32)  # 2**31 s and more: above every bucket's start
    bit = tl.zeros_like(x)
    high = x >= 65536
    bit, x = bit + tl.where(high, 16, 0), tl.where(high, x >> 16, x)
    high = x >= 256
    bit, x = bit + tl.where(high, 8, 0), tl.where(high, x >> 8, x)
    high = x >= 16
    bit, x = bit + tl.where(high, 4, 0), tl.where(high, x >> 4, x)
    high = x >= 4
    bit, x = bit + tl.where(high, 2, 0), tl.where(high, x >> 2, x)
    bit = bit + tl.where(x >= 2, 1, 0)
    bucket = tl.where(seconds > 0, tl.minimum(bit + 1, MAX_BUCKET), 0)  # (BLOCK_M, BLOCK_T)
    cell = rows[:, None] * T + keys[None, :]  # (BLOCK_M, BLOCK_T) offset in one (T, T) plane
    for h in tl.static_range(H):  # every head from the one bucket search above: once per pair, not per head
        value = tl.load(position_ptr + h * T * T + cell, mask=inside, other=0.0) + tl.load(table_ptr + h * N_BUCKETS + bucket)
        tl.store(out_ptr + (b * H + h) * T * T + cell, value.to(out_ptr.dtype.element_ty), mask=inside)


def _embed_kernel(items_ptr, contexts_ptr, table_ptr, out_ptr, N, offset_a, offset_b, D: tl.constexpr, C: tl.constexpr,
                  COLUMN_A: tl.constexpr, COLUMN_B: tl.constexpr, PARTS: tl.constexpr, BLOCK_R: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """Rows r*BLOCK_R..: out[r] = table[items[r]] (+ table[contexts[r, COLUMN_A] + offset_a])
    (+ table[contexts[r, COLUMN_B] + offset_b]), summed in fp32 in that order, stored in out's dtype."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)  # flat (user, position) rows
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    inside = row_ok[:, None] & (dims < D)[None, :]
    index = tl.load(items_ptr + rows, mask=row_ok, other=0)  # (BLOCK_R,) item_idx
    acc = tl.load(table_ptr + index[:, None] * D + dims[None, :], mask=inside, other=0.0)  # (BLOCK_R, BLOCK_D) fp32
    if PARTS >= 2:
        index = tl.load(contexts_ptr + rows * C + COLUMN_A, mask=row_ok, other=0) + offset_a
        acc += tl.load(table_ptr + index[:, None] * D + dims[None, :], mask=inside, other=0.0)
    if PARTS >= 3:
        index = tl.load(contexts_ptr + rows * C + COLUMN_B, mask=row_ok, other=0) + offset_b
        acc += tl.load(table_ptr + index[:, None] * D + dims[None, :], mask=inside, other=0.0)
    tl.store(out_ptr + rows[:, None] * D + dims[None, :], acc.to(out_ptr.dtype.element_ty), mask=inside)


def _flash_kernel(qkv_ptr, bias_ptr, pad_ptr, out_ptr, qk_scale, T, bias_head_stride, bias_user_stride,
                  H: tl.constexpr, DK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                  USE_PAD: tl.constexpr, FP32_DOT: tl.constexpr):
    """Queries m*BLOCK_M.. of (user b, head h), key blocks streamed with an online softmax in fp32;
    the bias one (H, T, T) for every user (bias_user_stride 0) or one per user."""
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    d_model = H * DK
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # query positions i
    dims = tl.arange(0, DK)
    row_ok = rows < T
    head = qkv_ptr + (b.to(tl.int64) * T) * (3 * d_model) + h * DK
    q = tl.load(head + rows[:, None] * (3 * d_model) + dims[None, :], mask=row_ok[:, None], other=0.0)  # (BLOCK_M, DK)
    bias_base = bias_ptr + b.to(tl.int64) * bias_user_stride + h * bias_head_stride
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max
    total = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp
    acc = tl.zeros([BLOCK_M, DK], tl.float32)
    end = T
    if CAUSAL:  # key blocks past this query block's last row are all in the future
        end = tl.minimum(T, (tl.program_id(0) + 1) * BLOCK_M)
    for start in range(0, end, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        key_ok = keys < T
        k_t = tl.load(head + d_model + keys[None, :] * (3 * d_model) + dims[:, None], mask=key_ok[None, :], other=0.0)
        v = tl.load(head + 2 * d_model + keys[:, None] * (3 * d_model) + dims[None, :], mask=key_ok[:, None], other=0.0)
        if FP32_DOT:
            qk = tl.dot(q.to(tl.float32), k_t.to(tl.float32), input_precision="ieee")
        else:
            qk = tl.dot(q, k_t)
        inside = row_ok[:, None] & key_ok[None, :]
        bias = tl.load(bias_base + rows[:, None] * T + keys[None, :], mask=inside, other=0.0)
        scores = qk * qk_scale + bias.to(tl.float32)  # (BLOCK_M, BLOCK_N) fp32
        blocked = ~key_ok[None, :] | ((keys[None, :] > rows[:, None]) & CAUSAL)
        if USE_PAD:  # padding keys, except a query's own position
            pad = tl.load(pad_ptr + b * T + keys, mask=key_ok, other=1) != 0
            blocked = blocked | (pad[None, :] & (keys[None, :] != rows[:, None]))
        scores = tl.where(blocked, float("-inf"), scores)
        new_top = tl.maximum(top, tl.max(scores, axis=1))
        safe = tl.where(new_top == float("-inf"), 0.0, new_top)  # a row with no visible key in any block so far
        p = tl.exp(scores - safe[:, None])
        scale = tl.exp(top - safe)
        total = total * scale + tl.sum(p, axis=1)
        if FP32_DOT:
            pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * scale[:, None] + pv
        top = new_top
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(out_ptr + (b.to(tl.int64) * T + rows[:, None]) * d_model + h * DK + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def check_supported(device: torch.device, head_dim: int) -> None:
    """Raise a readable error where the kernel cannot run: a CPU without the interpreter, or a head
    size ``tl.dot`` and ``tl.arange`` cannot tile (a power of two, at least 16)."""
    if device.type != "cuda" and not interpreted():
        raise RuntimeError(f"attention='triton' runs on CUDA devices (got {device}); on a CPU only under Triton's "
                           "interpreter (TRITON_INTERPRET=1 before lite_rec.infer.triton_attention is imported)")
    if head_dim < MIN_BLOCK or head_dim & (head_dim - 1):
        raise ValueError(f"attention='triton' needs a head size that is a power of two >= {MIN_BLOCK}, got {head_dim}")


def check_runs(device: torch.device, d_model: int, n_heads: int) -> None:
    """:func:`check_supported`, then one tiny launch (one user, two items): the first launch is
    where Triton builds the kernel, so a host that cannot (no C compiler for its launcher, a driver
    it does not know, ...) raises here, at model load, instead of on the first request."""
    check_supported(device, d_model // n_heads)
    t = 2
    qkv = torch.zeros(t, 3 * d_model, device=device, dtype=torch.bfloat16)  # (B*T, 3D), B = 1
    bias = torch.zeros(1, t, t, device=device, dtype=torch.bfloat16)  # (1, T, T)
    pad = torch.zeros(1, t, dtype=torch.bool, device=device)  # (B, T)
    attention(qkv, bias, pad, n_heads, 1.0, False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention(qkv: torch.Tensor, bias: torch.Tensor, pad: torch.Tensor, n_heads: int, qk_scale: float, causal: bool,
              num_warps: int = 4) -> torch.Tensor:
    """Masked multi-head self-attention of B users at once, one kernel.

    qkv:  (B*T, 3D) contiguous, columns [q | k | v], head h at columns h*dk:(h+1)*dk of each
    bias: (1 or H, T, T) contiguous additive relative-position bias (no mask in it)
    pad:  (B, T) bool, True where the item is padding
    returns (B*T, D) in qkv's dtype, row b*T + t, columns h*dk:(h+1)*dk for head h
    """
    b, t = pad.shape
    d = qkv.shape[1] // 3
    dk = d // n_heads
    _check_inputs(qkv, bias, pad, n_heads, b, t, d)
    check_supported(qkv.device, dk)
    out = torch.empty(b * t, d, device=qkv.device, dtype=qkv.dtype)  # (B*T, D)
    interpret = interpreted()
    _kernel(interpret, "tile")[(b * n_heads,)](
        qkv, bias, pad, out, float(qk_scale), t, 0 if bias.shape[0] == 1 else t * t,
        H=n_heads, DK=dk, BLOCK_T=max(MIN_BLOCK, triton.next_power_of_2(t)), CAUSAL=bool(causal),
        FP32_DOT=qkv.dtype == torch.float32 or interpret, num_warps=num_warps,
    )
    return out


def user_bias(times: torch.Tensor, position: torch.Tensor, table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) int64 Unix seconds, (H, T, T) fp32 position bias, (H, TIME_BUCKETS) fp32 head-major table ->
    (B, H, T, T) in ``dtype``: ``position[h, i, j] + table[h, time_bucket(|times[b, i] - times[b, j]|)]``,
    the sum in fp32 rounded once: each user's whole attention bias, built once per step for every layer.

    Why built, not computed in the flash kernel's tiles: the buckets depend on the user's times
    alone, so computing them (or even gathering the table by precomputed buckets) in every layer and
    head repeats the work 5 x 8 times over, and a gather inside the tile more than doubled the
    kernel's time (2.2-2.7 against 1.0 ms a layer for 1,024 users x 200 items on an H100); read as
    a plain tile, the per-user bias costs the kernel nothing measurable, and building it 0.6 ms once
    (docs/benchmarks.md)."""
    b, t = times.shape
    h = position.shape[0]
    if times.dtype != torch.int64 or not times.is_contiguous():
        raise ValueError(f"times must be contiguous int64 (B, T), got {times.dtype} {tuple(times.shape)}")
    if position.shape != (h, t, t) or position.dtype != torch.float32 or not position.is_contiguous():
        raise ValueError(f"position must be contiguous fp32 (H, T, T) with T = {t}, got {position.dtype} {tuple(position.shape)}")
    if table.shape != (h, TIME_BUCKETS) or table.dtype != torch.float32 or not table.is_contiguous():
        raise ValueError(f"table must be contiguous fp32 ({h}, {TIME_BUCKETS}), head-major, "
                         f"got {table.dtype} {tuple(table.shape)}")
    out = torch.empty(b, h, t, t, device=times.device, dtype=dtype)  # (B, H, T, T)
    if out.numel() == 0:
        return out
    block_m = 16
    _kernel(interpreted(), "user_bias")[(triton.cdiv(t, block_m), b)](
        times, position, table, out, t, H=h, BLOCK_M=block_m, BLOCK_T=max(MIN_BLOCK, triton.next_power_of_2(t)),
        MAX_BUCKET=TIME_BUCKETS - 1, N_BUCKETS=TIME_BUCKETS)
    return out


def embedding_sum(items: torch.Tensor, contexts: torch.Tensor | None, table: torch.Tensor, columns: list[int],
                  offsets: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The backbone inputs of a model with context embeddings, in one pass: (B, T) item_idx, (B, T, C)
    contexts, (R, D) fp32 table (the item rows, then each context embedding's rows from its offset) ->
    (B*T, D) in ``dtype``: row ``table[item] + table[contexts[..., columns[0]] + offsets[0]] (+ ...)``,
    summed in fp32 in that order and rounded once, as the model adds its embeddings.

    Why: the sum is the model's, but as torch ops it takes a gather per table, fp32 additions and a
    cast over the (B*T, D) activations (or ``embedding_bag`` and a cast): ~1.4 ms of a 1,024-user
    step against 0.14 for the ids-only model's one gather (H100); one kernel reads each row once
    from the cached table and writes the activations once."""
    b, t = items.shape
    d = table.shape[1]
    parts = 1 + len(columns)
    if len(columns) != len(offsets) or len(columns) > 2:
        raise ValueError(f"embedding_sum adds at most two context embeddings: columns {columns}, offsets {offsets}")
    if table.dtype != torch.float32 or not table.is_contiguous() or not items.is_contiguous():
        raise ValueError("embedding_sum needs a contiguous fp32 table and contiguous items")
    if columns and (contexts is None or contexts.shape[:2] != (b, t) or not contexts.is_contiguous()):
        raise ValueError(f"embedding_sum needs contiguous contexts (B, T, C) for the items {tuple(items.shape)}")
    out = torch.empty(b * t, d, device=table.device, dtype=dtype)  # (B*T, D)
    if out.numel() == 0:
        return out
    block_r = 8
    pad = (list(columns) + [0, 0])[:2], (list(offsets) + [0, 0])[:2]
    _kernel(interpreted(), "embed")[(triton.cdiv(b * t, block_r),)](
        items, contexts if columns else items, table, out, b * t, pad[1][0], pad[1][1], D=d,
        C=contexts.shape[2] if columns else 1, COLUMN_A=pad[0][0], COLUMN_B=pad[0][1], PARTS=parts, BLOCK_R=block_r,
        BLOCK_D=triton.next_power_of_2(d))
    return out


def flash_attention(qkv: torch.Tensor, bias: torch.Tensor, pad: torch.Tensor | None, n_heads: int, qk_scale: float,
                    causal: bool, block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Masked multi-head self-attention of B users, flash-style tiling (see the module docstring).

    qkv:   (B*T, 3D) contiguous, columns [q | k | v], head h at columns h*dk:(h+1)*dk of each
    bias:  (H, T, T) contiguous additive bias shared by every user, or (B, H, T, T) one per user
           (``model.time_bias``: :func:`user_bias`); no mask in it
    pad:   (B, T) bool, True where the item is padding; None: no key is masked as padding, which is
           exact for a causal model over right-padded rows (a real query never reaches padding)
    returns (B*T, D) in qkv's dtype, row b*T + t, columns h*dk:(h+1)*dk for head h
    """
    d = qkv.shape[1] // 3
    dk = d // n_heads
    t = bias.shape[-1]
    b = qkv.shape[0] // max(t, 1)
    _check_inputs(qkv, bias, pad, n_heads, b, t, d, heads_exact=True)
    check_supported(qkv.device, dk)
    out = torch.empty(b * t, d, device=qkv.device, dtype=qkv.dtype)  # (B*T, D)
    interpret = interpreted()
    block = max(MIN_BLOCK, triton.next_power_of_2(t))
    bm, bn = min(block_m, block), min(block_n, block)
    _kernel(interpret, "flash")[(triton.cdiv(t, bm), b * n_heads)](
        qkv, bias, pad if pad is not None else out, out, float(qk_scale), t, t * t, n_heads * t * t if bias.dim() == 4 else 0,
        H=n_heads, DK=dk, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=bool(causal), USE_PAD=pad is not None,
        FP32_DOT=qkv.dtype == torch.float32 or interpret, num_warps=num_warps, num_stages=num_stages,
    )
    return out


def _check_inputs(qkv: torch.Tensor, bias: torch.Tensor, pad: torch.Tensor | None, n_heads: int, b: int, t: int, d: int,
                  heads_exact: bool = False) -> None:
    """Shapes, dtypes, devices and contiguity the kernel's pointer arithmetic relies on."""
    if qkv.dim() != 2 or qkv.shape != (b * t, 3 * d) or d % n_heads:
        raise ValueError(f"qkv must be (B*T, 3D) = ({b * t}, 3 x D divisible by {n_heads} heads), got {tuple(qkv.shape)}")
    if qkv.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"qkv must be fp32, bf16 or fp16, got {qkv.dtype}")
    heads = (n_heads,) if heads_exact else (1, n_heads)
    if heads_exact and bias.dim() == 4:  # the flash kernel: one bias per user
        if bias.shape != (b, n_heads, t, t):
            raise ValueError(f"a per-user bias must be (B, H, T, T) = ({b}, {n_heads}, {t}, {t}), got {tuple(bias.shape)}")
    elif bias.dim() != 3 or bias.shape[0] not in heads or bias.shape[1:] != (t, t):
        raise ValueError(f"bias must be ({' or '.join(map(str, heads))}, T, T) with T = {t}, got {tuple(bias.shape)}")
    if pad is not None and pad.dtype != torch.bool:
        raise TypeError(f"pad must be a bool (B, T) tensor, got {pad.dtype}")
    for name, x in (("qkv", qkv), ("bias", bias)) + ((("pad", pad),) if pad is not None else ()):
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous (the kernel indexes it by row-major strides)")
        if x.device != qkv.device:
            raise ValueError(f"{name} is on {x.device}, qkv on {qkv.device}")
