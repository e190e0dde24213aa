"""Bad requests at the in-process app and at the pyfunc's ``predict``: one error shape, bounded in
size, never a 5xx, and the same rules on both sides (the shared Recommender).

One regression test per hole found in the service (each fails on the code before the fix), then
a property-based test (Hypothesis) that throws arbitrary JSON values, strings (lone surrogates,
huge ones), nestings and wrong types for every field at both.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lite_rec.core.config import ServeConfig
from lite_rec.infer.recommender import MAX_K, Recommender, RecommendError
from lite_rec.registry.refs import parse_model_ref
from lite_rec.serve.app import ERROR_BODY_MAX_BYTES, create_app
from lite_rec.serve.watcher import ModelWatcher
from tests.helpers.tiny_models import save_tiny_bundle, tiny_model

N_ITEMS = MAX_K + 100  # a catalog larger than the k limit, so the limit itself is what refuses k
IDS = [f"m{i}" for i in range(1, N_ITEMS + 1)]
PYFUNC_FILE = Path(__file__).resolve().parents[3] / "mlflow" / "pyfunc_model.py"
JSON = {"content-type": "application/json"}

# The documented error codes and the only extras each may carry (docs/serving.md).
EXTRAS = {
    "malformed_json": set(), "unsupported_media_type": set(), "invalid_request": {"errors", "error_count"},
    "unknown_items": {"unknown_item_ids", "unknown_item_count"}, "too_many_users": set(), "payload_too_large": set(),
    "missing_context": {"field", "reason", "model_version", "context_fields"},
    "invalid_context": {"field", "reason", "model_version", "context_fields"},
    "not_found": set(), "method_not_allowed": set(),
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model(n_items=N_ITEMS, window=5, seed=2, n_layers=1)
    return save_tiny_bundle(tmp_path_factory.mktemp("bad-input") / "bundle", model, IDS)


@pytest.fixture(scope="module")
def client(bundle: Path) -> TestClient:
    watcher = ModelWatcher(parse_model_ref(str(bundle)), Recommender)
    assert watcher.check()
    app = create_app(watcher, ServeConfig(max_batch_users=8), start_watcher=False)
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def pyfunc(bundle: Path) -> Any:
    """The real ``mlflow/pyfunc_model.py``, loaded as MLflow loads models from code."""
    spec = importlib.util.spec_from_file_location("lite_rec_pyfunc_under_test", PYFUNC_FILE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    model = module.LiteRecPyfunc()
    model.load_context(SimpleNamespace(artifacts={"bundle": str(bundle)}))
    return model


def assert_error_shape(resp: Any, status: int | None = None) -> dict[str, Any]:
    """A 4xx in the documented shape, under the size bound; returns the body."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.content[:500])
    if status is not None:
        assert resp.status_code == status, resp.content[:500]
    assert resp.headers["content-type"].startswith("application/json")
    assert len(resp.content) <= ERROR_BODY_MAX_BYTES, len(resp.content)
    body = json.loads(resp.content)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body
    assert body["error"] in EXTRAS, body
    assert set(body) - {"error", "detail"} <= EXTRAS[body["error"]], body
    return body


# ---------------------------------------------------------------------------------------------
# Regressions, one per hole


@pytest.mark.parametrize("path, key", [("/recommend", "history"), ("/recommend/batch", "histories")])
def test_a_lone_surrogate_id_is_a_422_not_a_500(client: TestClient, path: str, key: str) -> None:
    ids = ["m1", "\ud800"] if key == "history" else [["m1"], ["\ud800x"]]
    raw = json.dumps({key: ids, "k": 3}).encode()  # ensure_ascii: the JSON text is "\ud800", valid ASCII
    body = assert_error_shape(client.post(path, content=raw, headers=JSON), 422)
    assert body["error"] == "invalid_request" and "surrogate" in body["detail"]


def test_a_lone_surrogate_id_is_a_recommend_error_in_the_pyfunc(pyfunc: Any) -> None:
    with pytest.raises(RecommendError, match="surrogate"):
        pyfunc.predict(None, pd.DataFrame({"history": [["m1", "\udfff"]]}))


@pytest.mark.parametrize("raw", [b'{"history": ["\xff"]}', b'{"history": ["m1", "\xc3"], "k": 2}', b"\xef\xbb\xbf{}"])
def test_invalid_utf8_gets_our_malformed_json_body(client: TestClient, raw: bytes) -> None:
    body = assert_error_shape(client.post("/recommend", content=raw, headers=JSON), 400)
    assert body["error"] == "malformed_json"


@pytest.mark.parametrize("depth", [100_000, 5_000])
def test_deeply_nested_json_gets_our_malformed_json_body(client: TestClient, depth: int) -> None:
    raw = b'{"history": ' + b"[" * depth + b"]" * depth + b"}"
    body = assert_error_shape(client.post("/recommend/batch", content=raw, headers=JSON), 400)
    assert body["error"] == "malformed_json" and "nested too deeply" in body["detail"]


@pytest.mark.parametrize("raw", [b'{"history": [], "k": NaN}', b'{"history": [], "k": Infinity}', b'{"history": [], "k": 1' + b"0" * 5000 + b"}"])
def test_json_that_python_reads_but_json_forbids_or_cannot_hold_is_malformed(client: TestClient, raw: bytes) -> None:
    assert assert_error_shape(client.post("/recommend", content=raw, headers=JSON), 400)["error"] == "malformed_json"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_sent_as_another_media_type_is_a_415(client: TestClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = assert_error_shape(client.post("/recommend", content=b'{"history": ["m1"]}', headers=headers), 415)
    assert body["error"] == "unsupported_media_type" and "application/json" in body["detail"]
    assert client.post("/recommend", content=b'{"history": ["m1"]}', headers={"content-type": "application/json; charset=utf-8"}).status_code == 200
    assert client.post("/recommend", content=b'{"history": ["m1"]}', headers={"content-type": "application/vnd.x+json"}).status_code == 200


def test_service_and_pyfunc_share_one_k_limit(client: TestClient, pyfunc: Any) -> None:
    assert N_ITEMS > MAX_K
    ok = client.post("/recommend", json={"history": ["m1"], "k": MAX_K})
    assert ok.status_code == 200 and len(ok.json()["items"]) == MAX_K
    assert len(pyfunc.predict(None, pd.DataFrame({"history": [["m1"]], "k": [MAX_K]}))["item_ids"][0]) == MAX_K
    for k in (MAX_K + 1, N_ITEMS):
        body = assert_error_shape(client.post("/recommend", json={"history": ["m1"], "k": k}), 422)
        assert f"between 1 and {MAX_K}" in body["detail"]
        with pytest.raises(RecommendError, match=f"between 1 and {MAX_K}"):
            pyfunc.predict(None, pd.DataFrame({"history": [["m1"]], "k": [k]}))


def test_a_huge_unknown_id_comes_back_cut_with_a_count(client: TestClient) -> None:
    huge = "x" * 900_000
    resp = client.post("/recommend", json={"history": ["m1", huge, *[f"ghost-{i}" for i in range(30)]], "k": 3})
    body = assert_error_shape(resp, 422)
    assert body["error"] == "unknown_items" and body["unknown_item_count"] == 31
    assert len(body["unknown_item_ids"]) == 10 and body["unknown_item_ids"][0].startswith("x" * 64 + "... (900000 chars)")
    assert body["unknown_item_ids"][1] == "ghost-0"
    assert len(resp.content) < 4096


def test_a_huge_unknown_field_name_and_a_huge_k_are_cut_too(client: TestClient) -> None:
    body = assert_error_shape(client.post("/recommend", json={"history": [], "y" * 500_000: 1}), 422)
    assert body["error_count"] == 1 and len(body["errors"][0]["loc"][1]) < 100
    body = assert_error_shape(client.post("/recommend", json={"history": ["m1"], "k": 10**4000}), 422)
    assert len(body["detail"]) < 200


def test_unknown_paths_and_methods_get_the_same_shape(client: TestClient) -> None:
    assert assert_error_shape(client.get("/nowhere"), 404)["error"] == "not_found"
    resp = client.get("/recommend")
    assert assert_error_shape(resp, 405)["error"] == "method_not_allowed" and "POST" in resp.headers["allow"]


def test_pyfunc_refuses_wrong_option_types_as_the_service_does(client: TestClient, pyfunc: Any) -> None:
    for field, value in [("exclude_history", "maybe"), ("ignore_unknown", 1), ("k", "5"), ("k", [3])]:
        assert client.post("/recommend", json={"history": ["m1"], field: value}).status_code == 422
        with pytest.raises(RecommendError):
            pyfunc.predict(None, pd.DataFrame({"history": [["m1"]], field: [value]}))
    for history in (5, "m1", None, {"m1": 1}, [["m1"]], [1.5], [True]):
        assert client.post("/recommend", json={"history": history}).status_code == 422
        with pytest.raises(RecommendError):
            pyfunc.predict(None, pd.DataFrame({"history": [history]}))
    for table in ("not a table", 5, {"history": 5}, [1, 2], None):
        with pytest.raises(RecommendError):
            pyfunc.predict(None, table)


def test_integer_ids_are_read_as_their_decimal_string_on_both_sides(bundle: Path, pyfunc: Any) -> None:
    rec = pyfunc.recommender
    assert rec.to_indices([[1, "m2"]], ignore_unknown=True)[1] == [["1"]]  # 1 -> "1" (unknown here), not refused


# ---------------------------------------------------------------------------------------------
# Property: arbitrary input, never a 5xx, always our shape


_surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
_strings = st.one_of(
    st.text(max_size=20),
    st.sampled_from(IDS[:50]),
    st.tuples(st.text(max_size=5), _surrogates, st.text(max_size=5)).map("".join),
    st.integers(min_value=65, max_value=300_000).map(lambda n: "é" * n),
)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                     st.floats(allow_nan=False, allow_infinity=False), _strings)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_strings, inner, max_size=3), max_leaves=12)
_ids = st.lists(st.one_of(st.sampled_from(IDS[:50]), _strings, st.integers(), _json), max_size=8)
_fields = {
    "history": st.one_of(_ids, _json),
    "histories": st.one_of(st.lists(_ids, max_size=10), _json),
    "k": st.one_of(st.integers(min_value=-5, max_value=N_ITEMS + 5), st.integers(), _json),
    "exclude_history": st.one_of(st.booleans(), _json),
    "ignore_unknown": st.one_of(st.booleans(), _json),
}
_valid = st.fixed_dictionaries(  # near-valid requests, so that answers and near misses are both exercised
    {"history": st.lists(st.sampled_from(IDS[:50]), max_size=8),
     "histories": st.lists(st.lists(st.sampled_from(IDS[:50]), max_size=6), min_size=1, max_size=4)},
    optional={"k": st.integers(min_value=0, max_value=25), "exclude_history": st.booleans(), "ignore_unknown": st.booleans()},
).map(lambda d: {key: v for key, v in d.items() if key != ("histories" if len(d["history"]) % 2 else "history")})
_requests = st.one_of(
    _valid,
    st.fixed_dictionaries({}, optional={**_fields, **{"extra": _json}}),
    st.dictionaries(_strings, _json, max_size=4),
    _json,
)
_raw = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=200_000).map(lambda n: b'{"history": ' + b"[" * n + b"]" * n + b"}"),
    st.tuples(st.binary(max_size=20), st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])).map(lambda t: b'{"history": ["' + t[0] + t[1] + b'"]}'),
)
_content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "application/problem+json", None])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(["/recommend", "/recommend/batch"]), request=_requests, raw=st.one_of(st.none(), _raw), content_type=_content_types)
def test_property_no_5xx_and_one_bounded_error_shape(client: TestClient, path: str, request: Any, raw: bytes | None, content_type: str | None) -> None:
    content = raw if raw is not None else json.dumps(request).encode()  # ensure_ascii: surrogates travel as \udXXX
    resp = client.post(path, content=content, headers={"content-type": content_type} if content_type else {})
    assert resp.status_code < 500, resp.content[:500]
    event(f"HTTP {resp.status_code}")
    if resp.status_code == 200:
        body = resp.json()
        assert "results" in body if path.endswith("batch") else "items" in body
    else:
        assert_error_shape(resp)


_frames = st.one_of(
    st.lists(_valid.map(lambda d: {key: v for key, v in d.items() if key != "histories"}), min_size=1, max_size=5),
    st.lists(st.fixed_dictionaries({}, optional=_fields), min_size=1, max_size=5),  # records, as MLflow's server builds them
    st.dictionaries(st.sampled_from(["history", "k", "exclude_history", "ignore_unknown", "x"]), st.lists(_json, min_size=1, max_size=3), max_size=4),
    _json,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model_input=_frames)
def test_property_pyfunc_answers_or_raises_only_recommend_errors(pyfunc: Any, model_input: Any) -> None:
    try:
        frame = pd.DataFrame(model_input) if isinstance(model_input, list) and all(isinstance(r, dict) for r in model_input) else model_input
    except (ValueError, TypeError):
        frame = model_input
    try:
        out = pyfunc.predict(None, frame)
    except RecommendError as exc:
        event("RecommendError")
        assert len(str(exc)) < 2000, len(str(exc))
        str(exc).encode("utf-8")  # printable and encodable as it is
    else:
        event("answered")
        assert list(out.columns) == ["item_ids", "scores", "titles", "fallback"]
