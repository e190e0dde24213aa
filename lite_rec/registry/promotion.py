"""Promotion (challenger vs champion on the same held-out data) and rollback of ``champion``.

Why evaluate both again instead of comparing the numbers each run logged: the two versions may
have been trained on different snapshots of the data, evaluated under another protocol, or
logged by older code. A fair decision scores both *now*, on the same users, histories and
targets (the processed *validation* split), through the same code path serving uses
(:class:`~lite_rec.infer.recommender.Recommender` over each version's registered bundle). Histories
and targets travel as raw ``item_id`` strings, so two versions with different id tables are
still compared on the same data (an item a version does not know is dropped from the history,
and a target it does not know is a miss).

The decision: ``champion`` moves only when ``challenger - champion > tracking.promote_margin``
on ``tracking.promote_metric`` (``valid_ndcg_10``, ``valid_recall_20``, ...). Both scores, the
margin and the outcome are written as model-version tags on both versions, so the registry UI
shows why a version serves.

Why validation and never test: the test split is where the numbers we report come from. A
champion chosen by its test score would make the reported test score of the served model an
optimistic, selected number; the validation split (each user's second-to-last item, history =
the items before it) is already what training selects on, so selection stays on one split.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lite_rec.core.config import LiteRecConfig
from lite_rec.core.errors import ConfigError, DataError
from lite_rec.infer.recommender import Recommender
from lite_rec.registry.client import make_client
from lite_rec.registry.versions import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    alias_version,
    champion_history,
    download_bundle,
    registered_model_name,
    set_champion,
)

__all__ = ["HeldOut", "PromotionDecision", "load_held_out", "parse_metric", "promote", "promote_catalog", "rollback",
           "score_recommender"]

_METRIC_RE = re.compile(r"^(?:valid_)?(?P<kind>recall|ndcg)_(?P<k>[1-9][0-9]*)$")


@dataclass(frozen=True)
class HeldOut:
    """Users of one split in raw ids: what each version is scored on."""

    histories: list[list]  # everything before the target, oldest first: ids, or events {item_id, ts[, rating]}
    targets: list[str]
    source: str  # where it came from, for the decision record
    request_times: list[int] | None = None  # the target's time per user (what a context model reads as "now")

    def __post_init__(self) -> None:
        if len(self.histories) != len(self.targets) or not self.targets:
            raise DataError(f"{self.source}: held-out data needs one target per history and at least one user")


@dataclass(frozen=True)
class PromotionDecision:
    model_name: str
    metric: str
    margin: float
    challenger_version: str
    champion_version: str | None  # before the decision; None when there was no champion
    challenger_score: float | None
    champion_score: float | None
    promoted: bool
    reason: str
    champion_after: str

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def parse_metric(name: str) -> tuple[str, int]:
    """``valid_ndcg_10`` -> (``ndcg``, 10); the split prefix is optional (promotion uses validation)."""
    if name.startswith("test_"):
        raise ConfigError(f"tracking.promote_metric={name!r}: promotion selects on the validation split "
                          f"(e.g. valid_{name.removeprefix('test_')}); the test split's numbers are the ones reported, "
                          "and choosing the champion by them would bias them")
    m = _METRIC_RE.match(name)
    if m is None:
        raise ConfigError(f"tracking.promote_metric={name!r}: expected valid_recall_<k> or valid_ndcg_<k>, e.g. valid_ndcg_10")
    return m["kind"], int(m["k"])


def load_held_out(cfg: LiteRecConfig, split: str = "valid") -> HeldOut:
    """A processed split in raw ids: ``valid`` (history = train_seq, target = the validation item;
    what promotion scores) or ``test`` (history = train_seq + [valid], target = test)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test'; got {split!r}")
    processed = cfg.processed_dir
    for name in ("items.parquet", "sequences.parquet"):
        if not (processed / name).exists():
            raise DataError(f"{processed / name}: missing; run the data stage (lite-rec ingest) first")
    items = pd.read_parquet(processed / "items.parquet", columns=["item_idx", "item_id"])
    id_of = np.empty(int(items["item_idx"].max()) + 1, dtype=object)  # item_idx -> item_id
    id_of[items["item_idx"].to_numpy()] = items["item_id"].astype(str).to_numpy()
    seqs = pd.read_parquet(processed / "sequences.parquet")
    if split == "valid":
        histories = [id_of[np.asarray(s, dtype=np.int64)].tolist() for s in seqs["train_seq"]]
    else:
        histories = [id_of[np.append(np.asarray(s, dtype=np.int64), v)].tolist()
                     for s, v in zip(seqs["train_seq"], seqs["valid_item_idx"])]
    targets = id_of[seqs[f"{split}_item_idx"].to_numpy(dtype=np.int64)].tolist()
    request_times = None
    if {"train_ts", "valid_ts", "test_ts"} <= set(seqs.columns):
        # events (time, and rating where the file has it) and the target's time as the request time:
        # what a model reading the input context needs, and what an ids-only model ignores
        rated = {"train_rating", "valid_rating"} <= set(seqs.columns)
        events = []
        for row, history in zip(seqs.itertuples(index=False), histories, strict=True):
            times = [*row.train_ts, *([row.valid_ts] if split == "test" else [])]
            ratings = [*row.train_rating, *([row.valid_rating] if split == "test" else [])] if rated else None
            events.append([{"item_id": i, "ts": int(ts), **({"rating": float(ratings[n])} if rated else {})}
                           for n, (i, ts) in enumerate(zip(history, times, strict=True))])
        histories = events
        request_times = seqs[f"{split}_ts"].astype("int64").tolist()
    return HeldOut(histories, targets, f"{processed / 'sequences.parquet'} ({split} split)", request_times)


def score_recommender(
    rec: Recommender, held_out: HeldOut, metric: str, *, exclude_history: bool = True, batch_size: int = 1024
) -> float:
    """Recall@k or NDCG@k averaged over the held-out users (one target each, leave-one-out).

    With one target, Recall@k is 1 when it is in the top k, NDCG@k is 1 / log2(rank + 2) then
    (``lite_rec.eval.metrics``); the top-k list is all that is needed.
    """
    kind, k = parse_metric(metric)
    k = min(k, rec.num_items)
    total = 0.0
    for lo in range(0, len(held_out.targets), batch_size):
        times = None if held_out.request_times is None else held_out.request_times[lo : lo + batch_size]
        recs = rec.recommend(held_out.histories[lo : lo + batch_size], k, exclude_history, ignore_unknown=True,
                             request_times=times)
        for r, target in zip(recs, held_out.targets[lo : lo + batch_size]):
            ids = r.item_ids
            if target in ids:
                rank = ids.index(target)
                total += 1.0 if kind == "recall" else 1.0 / math.log2(rank + 2)
    return total / len(held_out.targets)


def _score_version(client: MlflowClient, name: str, version: str, held_out: HeldOut, metric: str, exclude: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="lite-rec-promote-") as tmp:
        rec = Recommender.from_path(download_bundle(client, name, version, Path(tmp)))
        return score_recommender(rec, held_out, metric, exclude_history=exclude)


def _record(client: MlflowClient, decision: PromotionDecision) -> None:
    """Tags on both versions: flat keys on the challenger, one JSON per challenger on the champion."""
    name, ch = decision.model_name, decision.challenger_version
    flat = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.metric": decision.metric,
        "promotion.margin": repr(decision.margin),
        "promotion.challenger_score": repr(decision.challenger_score),
        "promotion.champion_score": repr(decision.champion_score),
        "promotion.compared_with": str(decision.champion_version),
        "promotion.reason": decision.reason,
        "promotion.decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in flat.items():
        client.set_model_version_tag(name, ch, key, value)
    if decision.champion_version is not None and decision.champion_version != ch:
        client.set_model_version_tag(name, decision.champion_version, f"promotion.vs_v{ch}", decision.as_json())


def promote(cfg: LiteRecConfig, held_out: HeldOut | None = None, *, client: MlflowClient | None = None) -> PromotionDecision:
    """Score challenger and champion on the same held-out data; move ``champion`` if warranted."""
    client = client or make_client(cfg)
    name, metric, margin = registered_model_name(cfg), cfg.tracking.promote_metric, cfg.tracking.promote_margin
    parse_metric(metric)
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise RegistryError(f"{name}: no version has the alias '{CHALLENGER}'; train and register a model first")
    ch = str(challenger.version)
    if challenger.tags.get("verified") != "true":
        raise RegistryError(f"{name} v{ch} holds '{CHALLENGER}' but was never verified; register it with log_training_run")
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        set_champion(client, name, ch)
        decision = PromotionDecision(name, metric, margin, ch, None, None, None, True, "no champion: the challenger serves", ch)
        _record(client, decision)
        return decision
    cv = str(champion.version)
    if cv == ch:
        return PromotionDecision(name, metric, margin, ch, cv, None, None, False, "the challenger is already champion", cv)
    held_out = held_out or load_held_out(cfg)
    exclude = cfg.eval.exclude_history
    ch_score = _score_version(client, name, ch, held_out, metric, exclude)
    cv_score = _score_version(client, name, cv, held_out, metric, exclude)
    promoted = ch_score - cv_score > margin
    reason = (
        f"challenger v{ch} {metric}={ch_score:.6f} vs champion v{cv} {cv_score:.6f} on {len(held_out.targets)} users "
        f"({held_out.source}); {'beats' if promoted else 'does not beat'} it by more than {margin}"
    )
    if promoted:
        set_champion(client, name, ch)
    decision = PromotionDecision(name, metric, margin, ch, cv, ch_score, cv_score, promoted, reason, ch if promoted else cv)
    _record(client, decision)
    return decision


def promote_catalog(cfg: LiteRecConfig, version: str, extends: str, held_out: HeldOut | None = None, *,
                    client: MlflowClient | None = None) -> PromotionDecision:
    """Move ``champion`` to a catalog update `version` of the model version `extends` when that one
    is the champion and the update scores at most ``tracking.catalog_max_drop`` below it.

    Why not :func:`promote`'s rule (beat the champion by more than the margin): the update has
    the champion's weights, and its new items are in no held-out history or target (they are
    new), so on held-out data it can only tie the champion or lose a little, where a new item
    takes a top-k place from a target. The comparison stays (same users, same code path, same
    metric, both scores on the version tags) and catches what it is for: new items that crowd
    out the items users actually pick. An update of a version that no longer serves never moves
    ``champion``: it would silently undo a promotion or a rollback (``lite-rec promote`` can still
    compare it as the challenger).
    """
    client = client or make_client(cfg)
    name, metric, drop = registered_model_name(cfg), cfg.tracking.promote_metric, cfg.tracking.catalog_max_drop
    parse_metric(metric)
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        set_champion(client, name, version)
        decision = PromotionDecision(name, metric, -drop, version, None, None, None, True, "no champion: the update serves", version)
        _record(client, decision)
        return decision
    cv = str(champion.version)
    if cv != str(extends):
        reason = f"v{version} extends v{extends}, but v{cv} is champion: a catalog update replaces only the version it extends"
        decision = PromotionDecision(name, metric, -drop, version, cv, None, None, False, reason, cv)
        _record(client, decision)
        return decision
    held_out = held_out or load_held_out(cfg)
    exclude = cfg.eval.exclude_history
    ch_score = _score_version(client, name, version, held_out, metric, exclude)
    cv_score = _score_version(client, name, cv, held_out, metric, exclude)
    promoted = ch_score >= cv_score - drop
    reason = (f"catalog update v{version} {metric}={ch_score:.6f} vs the champion it extends, v{cv}, {cv_score:.6f} on "
              f"{len(held_out.targets)} users ({held_out.source}); {'within' if promoted else 'more than'} "
              f"tracking.catalog_max_drop={drop} {'of' if promoted else 'below'} it")
    if promoted:
        set_champion(client, name, version)
    decision = PromotionDecision(name, metric, -drop, version, cv, ch_score, cv_score, promoted, reason, version if promoted else cv)
    _record(client, decision)
    return decision


def rollback(model_name: str, *, cfg: LiteRecConfig | None = None, client: MlflowClient | None = None) -> str:
    """Move ``champion`` back to the version that held it before; returns that version.

    The champion history (a registered-model tag) is cut back to it, so a second rollback goes
    one step further. Versions deleted since are skipped. Raises when there is nothing to go
    back to.
    """
    client = client or (make_client(cfg) if cfg is not None else MlflowClient())
    current = alias_version(client, model_name, CHAMPION)
    if current is None:
        raise RegistryError(f"{model_name}: no '{CHAMPION}' alias to roll back")
    history = champion_history(client, model_name)
    while history and history[-1] == str(current.version):
        history.pop()
    while history:
        candidate = history[-1]
        try:
            if client.get_model_version(model_name, candidate).status == "READY":
                break
        except MlflowException:
            pass  # deleted since it served
        history.pop()
    if not history:
        raise RegistryError(f"{model_name}: no previous champion to roll back to (champion is v{current.version})")
    target = history[-1]
    set_champion(client, model_name, target, history=history)
    client.set_model_version_tag(model_name, str(current.version), "rollback.replaced_by", target)
    client.set_model_version_tag(model_name, target, "rollback.restored_from", str(current.version))
    return target
