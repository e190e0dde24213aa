"""Batch scoring on Ray (Ray Data): the in-process scorer's top-k, spread over a pool of actors.

Why Ray: ``scoring.score_users`` scores every user in one process, fine for millions of users on a
GPU but not for tens of millions on a schedule. Ray Data streams the users' histories from
Parquet through an actor pool on a cluster (or on the local machine), with no scheduler of ours:

    histories Parquet (user_id, history[, ts, rating])
      -> ray.data.read_parquet
      -> map_batches(TopKActor, actor pool): each actor loads the bundle ONCE and scores its batches
         with the shared Recommender (GPU actors, num_gpus=1 each, where the cluster has GPUs)
      -> write_parquet: user_id, rank, item_id, score (a folder of part files)

Same answers: an actor runs ``scoring.score_users`` itself on each batch, over its one
``fast_recommender`` (the service's and the in-process scorer's model and rules: raw ids,
window, history masking, popularity fallback), so both engines give the same top-k (CPU fp32:
the same items in the same order; scores to float rounding). Nothing of scoring is written twice.

The bundle travels through Ray's object store (its files, verified again against the manifest
where each actor unpacks them), so workers need no access to the registry or to the driver's
disk. Histories and the output are read and written by the workers: on a cluster they must be on
storage every node sees (a shared file system, or ``s3://``/``gs://`` URIs, which Ray Data reads
and writes directly). Locally the output folder is written beside its final name and renamed
into place, so a reader never sees half of it.

Resources: with GPUs in the cluster one actor per GPU; otherwise one single-threaded actor per
CPU, each reserving a fraction of a CPU so that one CPU stays free for Ray Data's read and write
tasks (whole-CPU actors starve them: on a 2-CPU machine the job hangs).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from lite_rec.core.errors import DataError, LiteRecError
from lite_rec.infer.fast_path import FastPathOptions

if TYPE_CHECKING:
    from lite_rec.serve.scoring import ModelSource, ScoreResult

__all__ = ["ENGINES", "RayPool", "TopKActor", "ray_pool", "score_users_ray"]

log = logging.getLogger(__name__)
ENGINES = ("inprocess", "ray")
HISTORY_COLUMNS = ("user_id", "history", "ts", "rating")
# Ray Data's blocks while scoring: about one batch of users each (_block_bytes), so batches go to
# every actor of the pool; Ray's default (128 MiB) hands one actor all of a 30,000-user file
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES, DEFAULT_BLOCK_BYTES = 64 << 10, 128 << 20, 1 << 20
# the pool starts scoring once every actor has loaded the bundle (else the first one up takes all of
# a small input); a cluster that cannot place the pool fails after this long instead of hanging
ACTORS_READY_S = 600


class RayMissing(LiteRecError):
    """The Ray engine was asked for where Ray is not installed."""


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the engine needs Ray Data, not only Ray core)
    except ImportError as exc:
        raise RayMissing(f"--engine ray needs Ray Data (pip install 'ray[data]'; {exc})") from None
    return ray


# ---------------------------------------------------------------------------------------------
# The actors


class _Run:
    """The run's shared state, as one Ray actor: the bundle's files (each scoring actor fetches them
    once) and the counts over every actor's batches (what ``ScoreResult`` reports). Why not the
    files as the scoring actors' constructor argument: Ray restarts a failed pool actor from its
    arguments, and warns about arguments that live in the object store."""

    def __init__(self, bundle_files: dict[str, bytes]) -> None:
        self.files = bundle_files
        self.counts = {"users": 0, "rows": 0, "fallback_users": 0, "unknown_items": 0}
        self.scorers: set[str] = set()  # the actors that scored at least one batch

    def bundle(self) -> dict[str, bytes]:
        return self.files

    def add(self, scorer: str, counts: dict[str, int]) -> None:
        self.scorers.add(scorer)
        for key, value in counts.items():
            self.counts[key] += int(value)

    def totals(self) -> dict[str, int]:
        return {**self.counts, "actors_used": len(self.scorers)}


class TopKActor:
    """One actor of the pool: unpacks and loads the bundle once, then scores batches of users."""

    def __init__(self, run: Any, *, k: int, exclude_history: bool, device: str, threads: int,
                 options: FastPathOptions, as_of: object) -> None:
        import ray

        from lite_rec.infer.bundle import load_bundle
        from lite_rec.infer.fast_path import fast_recommender
        from lite_rec.serve.scoring import score_users

        self.dir = Path(tempfile.mkdtemp(prefix="lite-rec-bundle-"))
        for name, data in ray.get(run.bundle.remote()).items():
            (self.dir / "bundle" / name).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / "bundle" / name).write_bytes(data)
        self.rec = fast_recommender(load_bundle(self.dir / "bundle"), device, options, threads=threads)
        self.score_users, self.run = score_users, run
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        # one request time for the whole run, where the scorer takes one (models that read it)
        takes_as_of = "as_of" in inspect.signature(score_users).parameters
        self.kwargs = {"k": k, "exclude_history": exclude_history, "progress": False,
                       **({"as_of": as_of} if takes_as_of else {})}

    def __call__(self, batch: pa.Table) -> pa.Table:
        frame = batch.select([c for c in HISTORY_COLUMNS if c in batch.column_names]).to_pandas()
        out = self.dir / "batch.parquet"
        result = self.score_users(self.rec, frame, out, batch_size=max(len(frame), 1), **self.kwargs)
        import ray

        ray.get(self.run.add.remote(self.name, {"users": result.users, "rows": result.rows,
                                       "fallback_users": result.fallback_users, "unknown_items": result.unknown_items}))
        return pq.read_table(out).replace_schema_metadata(None)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass(frozen=True)
class RayPool:
    """How many actors and what each reserves."""

    actors: int
    num_cpus: float
    num_gpus: float
    device: str  # what the actors score on: cuda (one GPU each) or cpu
    threads: int  # torch threads per CPU actor


def ray_pool(resources: dict[str, float], *, device: str = "auto", actors: int | None = None, threads: int = 1) -> RayPool:
    """The actor pool for a cluster's resources (``ray.cluster_resources()``): one actor per GPU
    when there are GPUs and ``device`` allows them (more `actors` than GPUs share them: a GPU
    actor's host-side work per user, id mapping and the history mask, can leave its GPU idle);
    else ``cpus / threads`` actors that leave one CPU of the cluster to the read and write tasks."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 1.0))
    if gpus > 0 and device != "cpu":
        n = actors or gpus
        return RayPool(n, 1.0, 1.0 if n <= gpus else round(gpus / n, 3), "cuda", threads)
    if device not in ("auto", "cpu"):
        raise DataError(f"device={device!r}: the Ray cluster has no GPU (resources: {resources.get('CPU', 0):g} CPUs)")
    n = actors or max(1, int(cpus // max(threads, 1)))
    per = max(0.05, min(float(threads), (cpus - 1.0) / n))
    return RayPool(n, round(per, 3), 0.0, "cpu", threads)


def _bundle_files(path: Path) -> dict[str, bytes]:
    """Every file of a bundle folder (manifest included), for the object store."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at `address`, or the Ray this process already runs, or start a local one;
    True when this call started or joined it (and should leave it at the end)."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **quiet)
    else:  # a local Ray of this machine's CPUs on loopback, without the dashboard
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", **quiet)
    return True


def score_users_ray(
    model: "ModelSource",
    histories: Any,
    out_path: Path | str,
    *,
    k: int = 20,
    user_ids: list[str] | None = None,
    exclude_history: bool = True,
    device: str = "auto",
    batch_size: int = 512,
    progress: bool = True,
    options: FastPathOptions = FastPathOptions(),
    tracking_uri: str | None = None,
    address: str | None = None,
    actors: int | None = None,
    threads: int = 1,
    as_of: object = None,
) -> "ScoreResult":
    """``scoring.score_users`` on Ray: the same arguments (plus the cluster's `address`, the
    pool's size and threads per CPU actor), the same rows, written as a folder of Parquet files.

    `histories`: a config (its processed data), a frame, or a Parquet file/folder/URI with
    ``user_id, history[, ts, rating]`` (read by the workers as it is; anything else, or a
    `user_ids` selection, is read here first and staged as Parquet beside the output). `address`:
    a running cluster (``ray://host:10001`` or ``host:6379``); None joins the Ray this process
    already runs, else starts a local one. `as_of`: one request time for every user (default: the
    clock when scoring starts), as the in-process scorer uses. The part files carry no
    ``lite_rec.*`` metadata (the in-process file records model, k and as_of there).
    """
    from lite_rec.serve.scoring import ScoreResult, read_histories, resolve_model

    started = time.perf_counter()
    progress = progress and not os.environ.get("TQDM_DISABLE")  # the CLI's --no-progress silences every bar
    ray = _ray()
    bundle, source = _resolve(model, tracking_uri, resolve_model)
    if not 1 <= k <= bundle.num_items:
        raise DataError(f"k must be between 1 and {bundle.num_items} (the catalog size); got {k}")
    remote_out = "://" in str(out_path)
    out = str(out_path) if remote_out else Path(out_path).resolve()
    staging = None if remote_out else out.parent / f".{out.name}.ray-{uuid.uuid4().hex[:8]}"
    read_from, users, row_bytes = _direct_source(histories, user_ids)
    joined = _connect(ray, address)
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
             ctx.target_max_block_size, ctx.wait_for_min_actors_s)
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    if not progress:  # Ray Data narrates each run at INFO (and warns that bars are off)
        data_log.setLevel(logging.ERROR)
    try:
        pool = ray_pool(ray.cluster_resources(), device=device, actors=actors, threads=threads)
        frame = None
        if read_from is None:  # a config, a frame, a log to group or a selection: read here once
            frame = read_histories(histories, user_ids)
            users = len(frame)
            if staging is not None:  # staged as Parquet beside the output (the workers read it from there)
                read_from = str(staging / "histories.parquet")
                staging.mkdir(parents=True, exist_ok=True)
                # Ray Data splits a file at its row groups: at least two per actor, at most four batches each
                group = max(1, min(4 * batch_size, math.ceil(users / (2 * pool.actors))))
                frame.to_parquet(read_from, index=False, row_group_size=group)
                _, row_bytes = _rows_and_bytes(Path(read_from))
        # the output keeps the histories' order (as the in-process file does); no bars unless asked
        ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start = True, progress, False
        ctx.target_max_block_size, ctx.wait_for_min_actors_s = _block_bytes(row_bytes, batch_size), ACTORS_READY_S
        run = ray.remote(num_cpus=0)(_Run).remote(_bundle_files(bundle.path))
        blocks = max(2 * pool.actors, math.ceil((users or 0) / (4 * batch_size)))
        request_time = int(time.time()) if as_of is None else as_of
        source_ds = ray.data.read_parquet(read_from) if read_from is not None else \
            ray.data.from_pandas(frame, override_num_blocks=blocks)  # a remote output: histories via the object store
        ds = source_ds.map_batches(
            TopKActor, batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=pool.actors), num_cpus=pool.num_cpus, num_gpus=pool.num_gpus,
            fn_constructor_kwargs={"run": run, "k": k, "exclude_history": exclude_history, "device": pool.device,
                                   "threads": pool.threads, "options": options, "as_of": request_time})
        target = str(out) if remote_out else str(staging / "scores")
        ds.write_parquet(target)
        counts = ray.get(run.totals.remote())
        gpus = f", {pool.num_gpus:g} GPU" if pool.num_gpus else ""
        log.info("ray: %d %s actors (%.2f CPU%s each) scored %d users; %d of them got batches", pool.actors,
                 pool.device, pool.num_cpus, gpus, counts["users"], counts["actors_used"])
        if not remote_out:
            _swap_in(Path(target), out)
    finally:
        (ctx.execution_options.preserve_order, ctx.enable_progress_bars, ctx.print_on_execution_start,
         ctx.target_max_block_size, ctx.wait_for_min_actors_s) = saved
        data_log.setLevel(level)
        if joined:
            ray.shutdown()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return ScoreResult(out, counts["users"], counts["rows"], counts["fallback_users"],  # type: ignore[arg-type]
                       counts["unknown_items"], source, time.perf_counter() - started)  # a URI stays a string


def _resolve(model: Any, tracking_uri: str | None, resolve_model: Any) -> tuple[Any, str]:
    """The bundle to ship and where it came from (a Recommender's or Bundle's own folder)."""
    from lite_rec.infer.bundle import Bundle
    from lite_rec.infer.recommender import Recommender

    if isinstance(model, Recommender):
        return model.bundle, str(model.bundle.path)
    if isinstance(model, Bundle):
        return model, str(model.path)
    return resolve_model(model, tracking_uri)


def _direct_source(histories: Any, user_ids: list[str] | None) -> tuple[str | None, int | None, float | None]:
    """A Parquet source the workers can read as it is (``user_id, history`` lists), with its rows
    and bytes per row where it is local; (None, None, None) when it must be read and staged here."""
    if user_ids is not None or not isinstance(histories, str | Path):
        return None, None, None
    text = str(histories)
    if "://" in text:
        return text, None, None
    path = Path(text)
    if not path.exists():
        raise DataError(f"{path}: histories not found")
    if not {"user_id", "history"} <= set(pq.ParquetDataset(path).schema.names):
        return None, None, None  # an interaction log: grouped into histories first
    return (str(path.resolve()), *_rows_and_bytes(path))


def _rows_and_bytes(path: Path) -> tuple[int, float | None]:
    """Rows of a local Parquet file or folder and their mean uncompressed bytes (from the footers)."""
    rows = size = 0
    for fragment in pq.ParquetDataset(path).fragments:
        meta = fragment.metadata
        rows += meta.num_rows
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return rows, (size / rows if rows else None)


def _block_bytes(row_bytes: float | None, batch_size: int) -> int:
    """Block size for about one batch of histories (1 MiB when the size of a row is unknown)."""
    if row_bytes is None:
        return DEFAULT_BLOCK_BYTES
    return int(min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, batch_size * row_bytes)))


def _swap_in(written: Path, out: Path) -> None:
    """Move the finished folder onto `out` (a file or folder there is replaced only now)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    if out.exists():
        os.replace(out, old)
    os.replace(written, out)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old.exists():
        old.unlink()
