"""Data-parallel training with ``torch.distributed`` (DDP): the process group, each rank's shard, collectives.

How a run is spread: ``torchrun --nproc-per-node N -m lite_rec.train.run ...`` starts N copies of the
training entry point (one per GPU, or N CPU processes); each joins the process group that torchrun
describes in its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``),
NCCL on GPUs and gloo on CPU. Every rank holds the whole model; DDP averages the gradients in the
backward pass, so after each optimizer step every rank holds the same weights.

What N changes and what it does not:

- ``train.batch_size`` stays the GLOBAL batch: each optimizer step consumes the same samples as a
  one-process run's step, split into N equal parts of ``batch_size / N`` (so ``batch_size`` must be a
  multiple of N). Global batch k is the k-th slice of the epoch's shuffled order, which depends on
  (seed, stage, epoch) only (``batches.epoch_plan``); rank r gathers the r-th N-th of it
  (:func:`shard_order`: a distributed sampler over the epoch plan, reshuffled each epoch by the seed).
  Steps per epoch, the lr schedule, the EMA's step count and ``checkpoint_every_steps`` are counted
  in global steps and do not change with N.
- The learning rate is unchanged (same global batch, same gradient): no scaling rule applies.
- The loss of a step is the mean over the GLOBAL batch's supervised targets: each rank's mean is
  weighted by its share of the targets (:func:`loss_weight`) before DDP averages, so windows with
  padding (``onepass``) weigh what they weigh in one process.
- Dropout masks differ (each rank draws its own), and fp32 sums run in another order: results
  agree with one process statistically, not bit for bit.
- Validation, early stopping, best weights, checkpoints and the EMA live on rank 0 only; it
  broadcasts the run's state after each epoch so every rank takes the same decisions.
- Resume: rank 0's checkpoint holds every rank's random state; a run resumed with another N still
  replays the same global batches (only the dropout masks of the remaining steps differ).

The run folder (``--out``) must be on storage every rank sees (always true on one host; a shared
file system across hosts): ranks read the checkpoint and the best weights from it, rank 0 writes.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lite_rec.core.errors import ConfigError

# how long a rank waits for the others in one collective: rank 0 validates (and, at the end,
# evaluates both splits) while the others wait in a broadcast
TIMEOUT = datetime.timedelta(minutes=60)
_OWNED = {"group": False}  # whether setup() created the process group (teardown leaves a launcher's own alone)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the run: rank, world size, rank on its host."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: validates, writes checkpoints and the model, logs."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives run."""
        return self.world_size > 1


SINGLE = Ranks()


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or "1")


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun described (once per process) and pick this rank's device.

    Outside torchrun, or with one process, nothing happens (``SINGLE``). On CUDA each rank takes
    ``cuda:LOCAL_RANK`` and NCCL; on CPU gloo. A rank is SIGKILLed when its launcher dies (Linux),
    so a killed torchrun (or flow) leaves no rank training on its own.
    """
    if not dist.is_available() or (launched_world_size() <= 1 and not dist.is_initialized()):
        return SINGLE, device
    local = int(os.environ.get("LOCAL_RANK", "0") or "0")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if visible > 1 and local >= visible:
            raise ConfigError(f"local rank {local} needs GPU {local}, but {visible} are visible: start at most one "
                              "process per GPU (--nproc-per-node; CUDA_VISIBLE_DEVICES lists the GPUs)")
        # one visible GPU: a launcher that binds each process to its own GPU (Ray Train, Slurm)
        device = torch.device("cuda", local if visible > 1 else 0)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        die_with_parent()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        _OWNED["group"] = True
    return Ranks(dist.get_rank(), dist.get_world_size(), local), device


def teardown() -> None:
    """Wait for every rank, then leave the process group that :func:`setup` created (without the
    barrier some gloo runs abort at exit); a group someone else created (Ray Train's) stays theirs.
    A no-op outside a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        if _OWNED["group"]:
            dist.destroy_process_group()
            _OWNED["group"] = False


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the one that started it dies (``PR_SET_PDEATHSIG``);
    a no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def rank_batch(global_batch: int, ranks: Ranks) -> int:
    """Samples per rank and step: ``train.batch_size`` (the global batch) split N ways."""
    if global_batch % ranks.world_size:
        raise ConfigError(f"train.batch_size={global_batch} is the global batch and must be a multiple of the number "
                          f"of processes ({ranks.world_size}); each process takes batch_size / {ranks.world_size}")
    return global_batch // ranks.world_size


def shard_order(order: np.ndarray, global_batch: int, ranks: Ranks) -> np.ndarray:
    """Rank r's sample order for an epoch: the r-th of N equal parts of every global batch.

    ``order`` is the epoch's shuffled order (one process's batch k = ``order[k*B:(k+1)*B]``). The
    union of the ranks' batch k is exactly that global batch, so N processes take the steps that
    one process takes. The last, short batch is split as evenly as possible; where it holds
    fewer samples than ranks, a rank without one repeats the batch's first sample (every rank must
    take every step).
    """
    if not ranks.active:
        return order
    per = rank_batch(global_batch, ranks)
    full = len(order) // global_batch * global_batch
    mine = order[:full].reshape(-1, ranks.world_size, per)[:, ranks.rank, :].reshape(-1)
    tail = order[full:]
    if len(tail):
        part = np.array_split(tail, ranks.world_size)[ranks.rank]
        mine = np.concatenate([mine, part if len(part) else tail[:1]])
    return mine


def loss_weight(count: torch.Tensor, ranks: Ranks) -> torch.Tensor | None:
    """Factor on this rank's mean loss so that DDP's average over ranks is the mean over the global
    batch's targets: ``N * count_r / sum(count)``. None with one process."""
    if not ranks.active:
        return None
    total = count.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    return (count.to(torch.float64) * ranks.world_size / total.clamp(min=1)).to(torch.float32)


def summed(ranks: Ranks, *values: torch.Tensor | float) -> list[float]:
    """The sums over ranks of a few scalars (plain values with one process)."""
    if not ranks.active:
        return [float(v) for v in values]
    flat = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    dist.all_reduce(flat)
    return flat.cpu().tolist()


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gathered(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ranks.active:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank r's dropout masks (rank 0 keeps the run's seed)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def torchrun_command(nproc_per_node: int, args: list[str], *, master_port: int | None = None,
                     python: str | None = None) -> list[str]:
    """``python -m torch.distributed.run --nproc-per-node N ... -m lite_rec.train.run <args>``: the
    documented ``torchrun`` line of one host (rendezvous on 127.0.0.1; ``master_port`` free)."""
    cmd = [python or sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node),
           "--nnodes", "1", "--master-addr", "127.0.0.1"]
    if master_port is not None:
        cmd += ["--master-port", str(master_port)]
    return [*cmd, "-m", "lite_rec.train.run", *args]
