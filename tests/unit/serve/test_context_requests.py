"""Requests with events and a request time at the in-process app and at the pyfunc's ``predict``:
a context model answers them as the shared Recommender does, and each missing or unusable field
is its own 422 (the pyfunc: the same ContextError) naming the field, the reason and the model
version; an ids-only model takes plain ids and events alike."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from lite_rec.core.config import ServeConfig
from lite_rec.infer.recommender import ContextError, Recommender
from lite_rec.registry.refs import parse_model_ref
from lite_rec.serve.app import ERROR_BODY_MAX_BYTES, create_app
from lite_rec.serve.watcher import ModelWatcher
from tests.helpers.context_models import T0, context_model, save_context_bundle, split_events, timed_sequences

N_ITEMS = 24
IDS = [f"f{i}" for i in range(1, N_ITEMS + 1)]
PYFUNC_FILE = Path(__file__).resolve().parents[3] / "mlflow" / "pyfunc_model.py"
FIELDS = ["ts", "rating", "request_time"]


def _app(bundle: Path) -> TestClient:
    watcher = ModelWatcher(parse_model_ref(str(bundle)), Recommender)
    assert watcher.check()
    return TestClient(create_app(watcher, ServeConfig(max_batch_users=8), start_watcher=False), raise_server_exceptions=False)


def _pyfunc(bundle: Path) -> Any:
    spec = importlib.util.spec_from_file_location("lite_rec_pyfunc_context_test", PYFUNC_FILE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    model = module.LiteRecPyfunc()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(bundle)}))
    return model


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("context-requests")
    ctx = save_context_bundle(root / "ctx", context_model(n_items=N_ITEMS, window=5, seed=8), IDS)
    ids_only = save_context_bundle(root / "ids", context_model(n_items=N_ITEMS, window=5, seed=8, time_gaps=False,
                                                               ratings=False, time_bias=False, query_time=False), IDS)
    return ctx, ids_only


@pytest.fixture(scope="module")
def client(bundles: tuple[Path, Path]) -> TestClient:
    return _app(bundles[0])


@pytest.fixture(scope="module")
def pyfunc(bundles: tuple[Path, Path]) -> Any:
    return _pyfunc(bundles[0])


def test_ready_shows_the_fields_the_model_reads(client: TestClient, bundles: tuple[Path, Path]) -> None:
    assert client.get("/ready").json()["context_fields"] == FIELDS
    assert _app(bundles[1]).get("/ready").json()["context_fields"] == []


def test_events_and_request_time_answer_as_the_recommender_does(client: TestClient, pyfunc: Any, bundles: tuple[Path, Path]) -> None:
    histories, times = split_events(timed_sequences(N_ITEMS), IDS)
    rec = Recommender.from_path(bundles[0])
    want = rec.recommend(histories, 5, request_times=times)
    for history, when, w in zip(histories, times, want):
        got = client.post("/recommend", json={"history": history, "request_time": when, "k": 5})
        assert got.status_code == 200, got.text
        assert [i["item_id"] for i in got.json()["items"]] == w.item_ids
    iso = pd.Timestamp(times[0], unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    same = client.post("/recommend", json={"history": histories[0], "request_time": iso, "k": 5}).json()
    assert [i["item_id"] for i in same["items"]] == want[0].item_ids
    batch = client.post("/recommend/batch", json={"histories": histories[:2], "request_time": times[0], "k": 5}).json()
    assert [[i["item_id"] for i in r["items"]] for r in batch["results"]] == \
        [r.item_ids for r in rec.recommend(histories[:2], 5, request_times=[times[0]] * 2)]
    out = pyfunc.predict(None, pd.DataFrame({"history": histories, "request_time": times, "k": 5}))
    assert out["item_ids"].tolist() == [w.item_ids for w in want]


OK = {"item_id": "f1", "ts": T0, "rating": 4}
BAD = [  # (request body, field, reason): one per way a context can be unusable
    ({"history": [OK, "f2"], "request_time": T0 + 9}, "ts", "missing"),
    ({"history": [OK, {"item_id": "f2", "ts": T0 + 1}], "request_time": T0 + 9}, "rating", "missing"),
    ({"history": [OK, {"item_id": "f2", "ts": T0 - 60, "rating": 2}], "request_time": T0 + 9}, "ts", "out_of_order"),
    ({"history": [OK], "request_time": T0 - 1}, "request_time", "before_last_event"),
    ({"history": [OK, {"item_id": "f2", "ts": "31/12/2000", "rating": 2}], "request_time": T0 + 9}, "ts", "unparseable"),
    ({"history": [OK, {"item_id": "f2", "ts": "2000-12-31T23:00:00", "rating": 2}], "request_time": T0 + 10**5}, "ts",
     "unparseable"),
    ({"history": [OK], "request_time": "tomorrow"}, "request_time", "unparseable"),
    ({"history": [OK], "request_time": 1e400}, "request_time", "unparseable"),  # JSON reads 1e400 as infinity
    ({"history": [OK, {"item_id": "f2", "ts": T0 + 1, "rating": 6}], "request_time": T0 + 9}, "rating", "out_of_range"),
    ({"history": [OK, {"item_id": "f2", "ts": T0 + 1, "rating": 1e400}], "request_time": T0 + 9}, "rating", "not_finite"),
    ({"history": [{"item_id": "f2", "ts": 10**13, "rating": 2}], "request_time": T0 + 9}, "ts", "out_of_range"),
]


@pytest.mark.parametrize(("body", "field", "reason"), BAD, ids=[f"{f}-{r}-{i}" for i, (_, f, r) in enumerate(BAD)])
def test_each_unusable_context_is_its_own_422_and_the_same_pyfunc_error(client: TestClient, pyfunc: Any, body: dict,
                                                                        field: str, reason: str) -> None:
    raw = json.dumps(body).replace("Infinity", "1e400").encode()  # json.dumps writes inf as Infinity
    for path, payload in (("/recommend", raw), ("/recommend/batch", raw.replace(b'"history": ', b'"histories": [', 1)
                                                 .replace(b', "request_time"', b'], "request_time"', 1))):
        got = client.post(path, content=payload, headers={"content-type": "application/json"})
        assert got.status_code == 422, (path, got.text)
        assert len(got.content) <= ERROR_BODY_MAX_BYTES
        error = got.json()
        assert error["error"] == ("missing_context" if reason == "missing" else "invalid_context")
        assert (error["field"], error["reason"], error["model_version"]) == (field, reason, "local")
        assert error["context_fields"] == FIELDS
        assert field in error["detail"] and "model version local reads ts, rating, request_time" in error["detail"]
    parsed = json.loads(raw)
    with pytest.raises(ContextError) as info:
        pyfunc.predict(None, pd.DataFrame({"history": [parsed["history"]], "request_time": [parsed["request_time"]]}))
    assert (info.value.field, info.value.reason) == (field, reason)
    assert f"model {pyfunc.recommender.version} reads" in str(info.value)  # the pyfunc names its bundle


def test_a_bad_context_fails_its_user_alone_in_a_micro_batch(client: TestClient) -> None:
    good = client.post("/recommend", json={"history": [OK], "request_time": T0 + 60, "k": 3})
    bad = client.post("/recommend", json={"history": [OK, "f3"], "request_time": T0 + 60, "k": 3})
    assert good.status_code == 200 and bad.status_code == 422
    assert client.post("/recommend", json={"history": [OK], "request_time": T0 + 60, "k": 3}).json() == good.json()


def test_schema_still_guards_events(client: TestClient) -> None:
    for history in ([{"item_id": "f1", "ts": T0, "colour": "red"}], [{"ts": T0}], [{"item_id": "f1", "ts": [T0]}],
                    [{"item_id": "f1", "ts": T0, "rating": "5"}], [{"item_id": "f1", "ts": True}]):
        got = client.post("/recommend", json={"history": history, "request_time": T0 + 5})
        assert got.status_code == 422 and got.json()["error"] == "invalid_request", got.text
    assert client.post("/recommend", json={"history": [OK], "request_time": [T0]}).json()["error"] == "invalid_request"


def test_an_ids_only_model_takes_ids_and_events_alike(bundles: tuple[Path, Path]) -> None:
    app, pyfunc = _app(bundles[1]), _pyfunc(bundles[1])
    plain = app.post("/recommend", json={"history": ["f1", "f4", "f9"], "k": 5}).json()
    events = [{"item_id": "f1", "ts": "whenever", "rating": 11}, {"item_id": "f4"}, {"item_id": "f9", "ts": T0}]
    with_events = app.post("/recommend", json={"history": events, "request_time": "never", "k": 5})
    assert with_events.status_code == 200, with_events.text
    assert with_events.json()["items"] == plain["items"]  # the fields it does not read are ignored, not checked
    out = pyfunc.predict(None, pd.DataFrame({"history": [["f1", "f4", "f9"], events], "k": 5}))
    assert out["item_ids"].tolist()[0] == out["item_ids"].tolist()[1] == [i["item_id"] for i in plain["items"]]


def test_the_services_loader_warms_a_context_model_up_with_events(bundles: tuple[Path, Path]) -> None:
    from lite_rec.infer.bundle import load_bundle
    from lite_rec.serve.watcher import make_loader

    rec = make_loader("cpu")(load_bundle(bundles[0]))  # the fast path, warmed up on every length bucket
    history, when = rec.example_request(IDS[:3])
    assert [set(e) for e in history] == [{"item_id", "ts", "rating"}] * 3 and when > history[-1]["ts"]
    assert len(rec.recommend([history], 4, request_times=[when])[0]) == 4
    ids_only = make_loader("cpu")(load_bundle(bundles[1]))
    assert ids_only.example_request(IDS[:2]) == (IDS[:2], None)
