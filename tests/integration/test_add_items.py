"""New items without retraining, end to end on real ml-100k: a model with the inductive head is
trained and registered in a real ``mlflow server``, the service follows its ``champion``, then
the catalog update (``lite_rec.registry.catalog.add_items``, the one call of the ``add-items`` flow's task) adds
items from a CSV file; the new version serves by the alias and a
history that points to a new item gets it in the top-k. A bad item file changes nothing.

Why a new item is "the obvious next one" here: it gets the exact title and genres of the item
the served model ranks first for the history, so the item LLM gives it the same text vector and
the inductive head (text part only: ``model.head_id_dropout=1.0``) the same output vector. It
fails if the new rows are not appended where the ids say, if the vector does not come through
the cache, or if the service does not pick the version up.

The item LLM is a tiny random-weight BERT with the real MiniLM tokenizer (as in
``tests/unit/items/test_encoder.py``): the real encoder code path, without a minute of MiniLM
on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lite_rec.core.config import REPO_ROOT, LiteRecConfig, build_config
from lite_rec.data.sequences import read_sequences
from lite_rec.items.catalog_file import ItemFileError
from lite_rec.pipeline.steps import embed_items
from lite_rec.registry.catalog import add_items
from lite_rec.registry.publish import log_training_run
from lite_rec.registry.versions import CHAMPION, alias_version
from lite_rec.train.export import build_bundle
from lite_rec.train.run import train_model
from tests.helpers.service_process import ServiceProcess, start_service
from tests.unit.items.test_encoder import save_tiny_bert

pytestmark = pytest.mark.integration

MODEL = "lite-rec-add-items"  # its own model and experiment on the run's shared MLflow server
K = 10


@dataclass(frozen=True)
class Served:
    cfg: LiteRecConfig
    svc: ServiceProcess
    client: MlflowClient
    flags: list[str]  # what the CLI needs to build the same config


@pytest.fixture(scope="module")
def served(ml100k_config: LiteRecConfig, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("add-items")
    (root / "data" / "processed").mkdir(parents=True)
    (root / "data" / "processed" / "ml-100k").symlink_to(ml100k_config.processed_dir)  # the data; caches stay here
    (root / "data" / "raw").symlink_to(ml100k_config.data_dir / "raw")
    encoder = save_tiny_bert(root / "tiny-bert")
    settings = [f"data_dir={root / 'data'}", f"item_encoder.model={encoder}", "item_encoder.max_tokens=24",
                "item_encoder.device=cpu", f"tracking.tracking_uri={mlflow_server}",
                f"tracking.registered_model={MODEL}", f"tracking.experiment={MODEL}"]
    cfg = build_config("ml-100k", [
        *settings, "model.backbone=lean", "model.pretrained=false", "model.d_model=32", "model.n_layers=1",
        "model.n_heads=2", "model.d_ff=64", "model.dropout=0.1", "model.item_repr=text+id", "model.pooling=last",
        "model.head=inductive", "model.head_id_dropout=1.0", "train.strategy=onepass", "train.batch_size=128",
        "train.lr=2e-3", "train.max_epochs=1", "train.device=cpu",
    ])
    vectors = embed_items(cfg, progress=False)
    result = train_model(cfg, read_sequences(cfg.processed_dir / "sequences.parquet"), vectors, root / "run", progress=False)
    v1 = log_training_run(cfg, result, build_bundle(cfg, result.out_dir, root / "bundle"), commit="add-items")
    assert CHAMPION in v1.aliases and v1.version == "1"
    svc = start_service(["--model", f"models:/{MODEL}@{CHAMPION}", "--device", "cpu", "--poll-interval", "0.5"],
                        root / "service", env={"MLFLOW_TRACKING_URI": mlflow_server})
    try:
        flags = [a for s in settings for a in ("--set", s) if not s.startswith("data_dir=")]
        yield Served(cfg, svc, MlflowClient(mlflow_server, registry_uri=mlflow_server), ["--data-dir", str(root / "data"), *flags])
    finally:
        svc.stop()


def _history(cfg: LiteRecConfig) -> list[str]:
    """The first user's last 20 training items, as raw ids."""
    items = pd.read_parquet(cfg.processed_dir / "items.parquet").set_index("item_idx")
    seq = read_sequences(cfg.processed_dir / "sequences.parquet")["train_seq"].iloc[0]
    return items.loc[list(seq)[-20:], "item_id"].astype(str).tolist()


def _top(svc: ServiceProcess, history: list[str]) -> dict:
    got = httpx.post(svc.url + "/recommend", json={"history": history, "k": K}, timeout=30)
    assert got.status_code == 200, got.text
    return got.json()


def test_added_items_serve_by_the_alias_without_retraining(served: Served, tmp_path: Path) -> None:
    cfg, svc = served.cfg, served.svc
    history = _history(cfg)
    before = _top(svc, history)
    assert before["model_version"] == "1"
    first = before["items"][0]["item_id"]  # what the history points to
    items = pd.read_parquet(cfg.processed_dir / "items.parquet").set_index("item_id")
    twin = items.loc[first]
    catalog = tmp_path / "new-items.csv"
    pd.DataFrame({"item_id": ["new-twin", "new-other"], "title": [twin["title"], "A Documentary Nobody Has Seen (2026)"],
                  "genres": [twin["genres"], "Documentary"]}).to_csv(catalog, index=False)

    update = add_items(cfg, catalog, progress=False, client=served.client)  # what the add-items flow's one task calls
    assert (update.registered.version, update.extends) == ("2", "1")
    assert (update.change.added, update.change.updated) == (["new-twin", "new-other"], [])
    assert update.encoded == 1  # the twin's text is the cached text of the item it copies: only the other is encoded
    assert update.decision.promoted and update.decision.champion_after == "2", update.decision.reason

    status = svc.wait_for(lambda s: s.get("model_version") == "2", 60, "the swap to the new catalog")
    assert status["num_items"] == len(items) + 2
    after = _top(svc, history)
    ranked = [i["item_id"] for i in after["items"]]
    assert after["model_version"] == "2" and "new-twin" in ranked, ranked
    assert ranked.index("new-twin") <= 1 and first in ranked[:2]  # the twin ties the item it copies
    assert "new-other" not in ranked
    assert [i for i in ranked if i != "new-twin"] == [i["item_id"] for i in before["items"]][: K - 1]  # old scores unchanged
    # a new item in a history is an ordinary item now (unknown before: the documented 422)
    assert httpx.post(svc.url + "/recommend", json={"history": ["new-other"], "k": 3}, timeout=30).status_code == 200
    tags = served.client.get_model_version(MODEL, "2").tags
    assert tags["catalog.extends_version"] == "1" and tags["catalog.added"] == "2" and tags["verified"] == "true"
    assert tags["promotion.decision"] == "promoted" and tags["dataset"] == "ml-100k"


def test_a_bad_item_file_leaves_the_served_model_and_the_registry_untouched(served: Served, tmp_path: Path) -> None:
    client, svc = served.client, served.svc
    versions = sorted(m.version for m in client.search_model_versions(f"name = '{MODEL}'"))
    champion = alias_version(client, MODEL, CHAMPION).version
    catalogs = sorted((served.cfg.runs_dir / "catalog").glob("*")) if (served.cfg.runs_dir / "catalog").exists() else []
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title,genres\nfresh-1,Fresh One,Drama\nfresh-2,Fresh Two,Comedy\nfresh-1,Again,Drama\n")
    with pytest.raises(ItemFileError, match=r"bad\.csv: row 3, line 4: item_id 'fresh-1' appears twice"):
        add_items(served.cfg, bad, client=client)
    # the command: exit status 2 and the same message, before any server starts
    done = subprocess.run([sys.executable, "-m", "lite_rec_flows.cli", "add-items", "ml-100k", "--items", str(bad), *served.flags],
                          cwd=REPO_ROOT, env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "lite-rec add-items: error: " in done.stderr and "row 3, line 4: item_id 'fresh-1' appears twice" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(m.version for m in client.search_model_versions(f"name = '{MODEL}'")) == versions
    assert alias_version(client, MODEL, CHAMPION).version == champion
    assert (sorted((served.cfg.runs_dir / "catalog").glob("*")) if catalogs else []) == catalogs
    ready = svc.ready()
    assert ready["model_version"] == champion and ready["last_error"] is None
    unknown = httpx.post(svc.url + "/recommend", json={"history": ["fresh-1"], "k": 3}, timeout=30)
    assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_items"
