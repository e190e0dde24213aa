"""The ``lite-rec`` command line: one subcommand per pipeline step, all on one config object.

It lives beside the flows (not in ``lite_rec/``) because some subcommands run Prefect flows,
and the library itself never imports Prefect; library-only subcommands import lazily.

Every subcommand takes a dataset name (``ml-1m``) or YAML path, an optional ``--profile``
and any number of ``--set section.field=value`` overrides, builds the same
:class:`~lite_rec.core.config.LiteRecConfig` that the Prefect flows build from deployment
parameters, and calls the library function for that step. A :class:`LiteRecError` becomes a
one-paragraph message and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from lite_rec.core.config import LiteRecConfig, available_datasets, available_profiles, build_config
from lite_rec.core.env import apply_local_defaults
from lite_rec.core.errors import LiteRecError

log = logging.getLogger("lite_rec")

class _OursOrWarnings(logging.Filter):
    """Lets through our own records at any level and everybody else's from WARNING up: Great
    Expectations, httpx (the requests to the temporary Prefect server), matplotlib and Prefect
    narrate their internals at INFO, and some of them reset their loggers' levels on import."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith("lite_rec")


def _configure_output(verbose: bool) -> None:
    """Our own progress and results at INFO, everybody else's only from WARNING unless `verbose`.

    Prefect and MLflow read their logging settings when they are first imported, so those are set
    in the environment here, before any of them is imported."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbose:
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OursOrWarnings())
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _quiet_weight_loading() -> None:
    """transformers draws a bar per checkpoint it loads; our own bars already say what runs."""
    if logging.getLogger("lite_rec").getEffectiveLevel() > logging.DEBUG:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextmanager
def _flow_server(cfg: LiteRecConfig) -> Iterator[None]:
    """Run an in-process flow against a temporary Prefect server that dies with this process,
    unless the user points PREFECT_API_URL at a server of their own."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    from lite_rec.pipeline.stack import temporary_prefect_server

    with temporary_prefect_server(cfg.data_dir.resolve() / "prefect"):
        yield


def _config_from(args: argparse.Namespace) -> LiteRecConfig:
    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    cfg = build_config(args.dataset, overrides, profile=args.profile)
    apply_local_defaults(cfg.data_dir)
    return cfg


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    print(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    if args.prefect:
        from lite_rec_flows.ingest import ingest_flow

        with _flow_server(cfg):
            result = ingest_flow(dataset=args.dataset, profile=args.profile, overrides=_overrides_dict(cfg),
                                 force=args.force, progress=not args.no_progress)
    else:
        from lite_rec.data.ingest import ingest

        result = ingest(cfg, progress=not args.no_progress, force=args.force)
    stats = result.stats
    state = "up to date (skipped)" if result.skipped else f"written in {result.seconds:.1f} s"
    print(f"{result.dataset}: {stats.get('users')} users, {stats.get('items')} items, "
          f"{stats.get('interactions')} interactions -> {result.processed_dir} [{state}]")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    _quiet_weight_loading()
    from lite_rec.items.cache import load_or_encode_items

    vectors = load_or_encode_items(cfg, progress=not args.no_progress)
    n, d = vectors.vectors.shape
    print(f"item vectors: {n - 1} items x {d} dims ({vectors.manifest.get('encoder')})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """The whole offline stage as the Prefect `train` flow, in-process (the embedded default)."""
    cfg = _config_from(args)
    _quiet_weight_loading()
    from lite_rec_flows.train import train_flow

    from lite_rec.registry.client import resolve_tracking_uri

    with _flow_server(cfg):
        summary = train_flow(dataset=args.dataset, profile=args.profile, overrides=_overrides_dict(cfg),
                             register_model=not args.no_register, progress=not args.no_progress,
                             nproc_per_node=args.nproc_per_node)
    metrics = summary["metrics"]
    print("\nmetrics (test)      masked  unmasked   (masked: the user's history removed from the ranking)")
    for name in ("recall_10", "recall_20", "ndcg_10", "ndcg_20"):
        masked, unmasked = (metrics.get(f"test_{kind}_{name}", float("nan")) for kind in ("masked", "unmasked"))
        print(f"  {name:16s} {masked:.4f}    {unmasked:.4f}")
    if "history_logit" in summary:
        print(f"history score:     {summary['history_logit']:.2f} (model.history_logit: learned for items already seen)")
    if "distill_top_k_mass" in summary:
        print(f"teachers:          {len(cfg.train.distill_from)} (train.distill_from; the top {cfg.train.distill_top_k} "
              f"items held {100 * summary['distill_top_k_mass']:.1f}% of their probability)")
    resumed = " (resumed from its last checkpoint)" if summary.get("resumed") else ""
    print(f"model folder:      {summary['model_dir']}{resumed}")
    uri = resolve_tracking_uri(cfg)
    print(f"MLflow store:      {uri}  (browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1)")
    if "model_uri" in summary:
        print(f"registered model:  {summary['model_uri']} (aliases: {', '.join(summary['aliases']) or '-'})")
        data_dir = "" if str(cfg.data_dir) == "data" else f" --set data_dir={cfg.data_dir}"
        print(f"next, serve it:    lite-rec serve --dataset {args.dataset}{data_dir}  "
              f"(the champion, on http://{cfg.serve.host}:{cfg.serve.port})")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    from lite_rec.registry.promotion import promote

    print(promote(cfg).as_json())
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    from lite_rec.registry.promotion import rollback
    from lite_rec.registry.versions import registered_model_name

    name = registered_model_name(cfg)
    print(f"{name}: champion is version {rollback(name, cfg=cfg)} again")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    """Start or stop the local team stack: MLflow server, Prefect server, workers (all on 127.0.0.1)."""
    from pathlib import Path

    from lite_rec.core.config import REPO_ROOT
    from lite_rec.pipeline import stack as local_stack

    root = Path(args.data_dir or "data").resolve() / "stack"
    pids = root / "pids.json"
    running = [s for s in local_stack.load_pids(pids) if local_stack._group_alive(s.pid)]
    if args.action == "status" or (args.action == "up" and running):
        for svc in running:
            print(f"{svc.name:16s} pid {svc.pid:<8d} {svc.url or ''}  log {svc.log}")
        if not running:
            print("nothing running")
        return 0
    if args.action == "down":
        for svc in reversed(running):
            local_stack.stop(svc)
            print(f"stopped {svc.name} (pid {svc.pid})")
        pids.unlink(missing_ok=True)
        return 0
    started: list = []
    try:
        mlflow_svc = local_stack.start_mlflow(root / "mlflow", args.mlflow_port)
        started.append(mlflow_svc)
        server = local_stack.start_prefect_server(root / "prefect", args.prefect_port)
        started.append(server)
        env = {"MLFLOW_TRACKING_URI": mlflow_svc.url, "LITE_REC_DATA_DIR": str(Path(args.data_dir or "data").resolve())}
        for pool in args.pools:
            started.append(local_stack.start_worker(pool, root / "prefect", server.url, REPO_ROOT, env=env))
    except BaseException:
        for svc in reversed(started):
            local_stack.stop(svc)
        raise
    local_stack.save_pids(pids, started)
    print(f"MLflow:  {mlflow_svc.url}\nPrefect: {server.url} (UI {server.url[:-4]})\nworkers: {', '.join(args.pools)}")
    print(f"export PREFECT_API_URL={server.url} MLFLOW_TRACKING_URI={mlflow_svc.url}")
    print("then: prefect --no-prompt deploy --all && prefect deployment run train/ml100k-smoke --watch")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """Top-k for every user (or --users) to Parquet, through the Prefect `score` flow in-process."""
    cfg = _config_from(args)
    from lite_rec_flows.score import score_flow

    with _flow_server(cfg):
        result = score_flow(dataset=args.dataset, profile=args.profile, overrides=_overrides_dict(cfg), model=args.model,
                            out=args.out, k=args.k, user_ids=args.users, engine=args.engine, address=args.address)
    print(result)
    return 0


def cmd_add_items(args: argparse.Namespace) -> int:
    """New or changed items into a new version of the registered model, without retraining (the Prefect `add-items` flow)."""
    cfg = _config_from(args)
    from lite_rec.items.catalog_file import read_item_file

    read_item_file(args.items, cfg.dataset)  # a bad file fails here, before any server starts (the flow checks it again)
    _quiet_weight_loading()
    from lite_rec_flows.catalog import add_items_flow

    with _flow_server(cfg):
        out = add_items_flow(items=args.items, dataset=args.dataset, profile=args.profile, overrides=_overrides_dict(cfg),
                             model=args.model, progress=not args.no_progress)
    print(f"new version:       {out['model_uri']} (extends version {out['extends']})")
    print(f"items:             {len(out['added'])} added, {len(out['updated'])} updated; {out['encoded']} texts encoded (the others from the item-vector cache)")
    print(f"champion:          version {out['champion']} ({'the new version' if out['promoted'] else 'unchanged'}: {out['reason']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """The scoring step of a bundle or registered model as ONNX, with its sidecar JSON (lite_rec/infer/onnx_export.py)."""
    from lite_rec.infer.onnx_export import export_onnx, sidecar_path
    from lite_rec.registry.client import client_for
    from lite_rec.registry.refs import parse_model_ref
    from lite_rec.registry.versions import fetch_bundle, resolve_version

    ref = parse_model_ref(args.model)
    client = client_for(args.tracking_uri) if ref.path is None else None
    try:
        bundle, source = fetch_bundle(ref, resolve_version(ref, client), client)
    except LookupError as exc:
        print(f"lite-rec export: error: {exc}", file=sys.stderr)
        return 2
    sidecar = export_onnx(bundle, args.out, top_k=args.top_k, opset=args.opset)
    shapes = {side: ", ".join(f"{d['name']} {d['dtype']} {tuple(d['shape'])}" for d in sidecar[side]) for side in ("inputs", "outputs")}
    print(f"{source} -> {args.out} (ONNX opset {sidecar['opset']}, dynamic batch and length up to {sidecar['max_seq_len']})\n"
          f"  inputs:  {shapes['inputs']}\n  outputs: {shapes['outputs']}\n  sidecar: {sidecar_path(args.out)}")
    return 0


def _overrides_dict(cfg: LiteRecConfig) -> dict:
    """The resolved config as a nested dict: what a Prefect flow takes as `overrides`."""
    data = cfg.model_dump(mode="json")
    data.pop("profile", None)
    return data


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "ingest": (cmd_ingest, "raw dump -> validated Parquet sequences (the data stage)"),
    "embed": (cmd_embed, "item texts -> cached item vectors (the item LLM)"),
    "train": (cmd_train, "the offline stage: ingest and embed when stale, train, evaluate, register"),
    "promote": (cmd_promote, "challenger vs champion on held-out data; move champion if better"),
    "rollback": (cmd_rollback, "move champion back to the previous champion version"),
    "score": (cmd_score, "batch scoring: top-k for every user to Parquet (Prefect `score` flow)"),
    "add-items": (cmd_add_items, "add or update items of a registered model without retraining (model.head=inductive)"),
    "config": (cmd_config, "print the fully resolved config as JSON"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lite-rec", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("dataset", help=f"dataset name ({', '.join(available_datasets())}) or a YAML path")
        p.add_argument("--profile", choices=available_profiles(), help="settings bundle merged over the dataset config")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. --set train.lr=1e-3 (repeatable)")
        p.add_argument("--data-dir", help="where raw, processed and run outputs live (default ./data)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--force", action="store_true", help="redo the data stage even when its outputs are current")
        if name == "ingest":
            p.add_argument("--prefect", action="store_true", help="run through the Prefect `ingest` flow (in-process)")
        if name == "score":
            p.add_argument("--model", help="models:/<name>@<alias>, models:/<name>/<version> or a bundle dir (default: champion)")
            p.add_argument("--out", help="Parquet path (default under the data dir)")
            p.add_argument("-k", type=int, default=20, help="items per user")
            p.add_argument("--users", nargs="+", help="only these raw user ids")
            p.add_argument("--engine", choices=["inprocess", "ray"], default="inprocess",
                           help="inprocess (one file) or ray: Ray Data over an actor pool (a folder of Parquet parts)")
            p.add_argument("--address", help="with --engine ray: a running Ray cluster (host:6379 or ray://host:10001); "
                                             "default a local Ray")
        if name == "add-items":
            p.add_argument("--items", required=True, help="CSV or Parquet file: item_id, title, and the columns the "
                                                         "dataset's item text reads (docs/serving.md)")
            p.add_argument("--model", help="the version to extend: models:/<name>@<alias> or models:/<name>/<version> "
                                           "(default: the registered model's champion)")
        if name == "train":
            p.add_argument("--no-register", action="store_true", help="train and evaluate, do not log to MLflow")
            p.add_argument("--nproc-per-node", type=int, metavar="N",
                           help="data-parallel training in N torchrun processes (one per GPU; gloo on CPU); "
                                "train.batch_size stays the global batch (docs/scaling.md)")
    sub.add_parser("serve", help=SERVE_HELP, add_help=False)
    ex = sub.add_parser("export", help="write a model's scoring step as ONNX (for ONNX Runtime / Triton Inference Server)",
                        description=cmd_export.__doc__)
    ex.add_argument("model", help="a bundle directory, models:/<name>@<alias> or models:/<name>/<version>")
    ex.add_argument("--out", required=True, help="the .onnx file to write (its sidecar JSON goes beside it)")
    ex.add_argument("--top-k", type=int, default=0, help="also output the best K items, the input items masked (default: scores only)")
    ex.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    ex.add_argument("--tracking-uri", help="MLflow tracking server for models:/ URIs (default: MLFLOW_TRACKING_URI)")
    st = sub.add_parser("stack", help="start/stop the local MLflow + Prefect servers and workers",
                        description=cmd_stack.__doc__)
    st.add_argument("action", choices=["up", "down", "status"])
    st.add_argument("--data-dir", help="where the stack keeps its databases and logs (default ./data)")
    st.add_argument("--pools", nargs="+", default=["cpu"], help="work pools to start a worker for (default: cpu)")
    st.add_argument("--mlflow-port", type=int, default=5000)
    st.add_argument("--prefect-port", type=int, default=4200)
    return parser


SERVE_HELP = "the HTTP service over a registered model (`lite-rec serve --help` for its options)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the service owns its options (lite_rec/serve/app.py)
        from lite_rec.serve.app import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    _configure_output(args.verbose)
    if getattr(args, "no_progress", False):
        # our own bars (and pip's, for registry packages) take the flag explicitly; this also
        # silences third-party tqdm bars such as transformers' weight loading
        os.environ["TQDM_DISABLE"] = "1"
    func = {"stack": cmd_stack, "export": cmd_export}.get(args.command) or COMMANDS[args.command][0]
    try:
        return func(args)
    except LiteRecError as exc:
        print(f"lite-rec {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lite-rec {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
