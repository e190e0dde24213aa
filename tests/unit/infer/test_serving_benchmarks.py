"""The serving benchmarks run where they will be run for real: their --quick mode on a CPU writes the
JSON the docs quote (benchmarks/bench_serve_suite.py, benchmarks/bench_generative.py, benchmarks/bench_context.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _run(script: str, out: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick", "--device", "cpu", "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text())


def test_generative_baseline_quick_mode(tmp_path: Path) -> None:
    report = _run("bench_generative.py", tmp_path / "gen.json")
    assert report["model"]["beams"] == 20 and set(report["model"]["constraints"]) == {"prefix_fn", "mask"}
    rows = report["rows"]
    assert {(r["constraint"], r["length"], r["batch"]) for r in rows} == {
        (c, n, b) for c in ("prefix_fn", "mask") for n in (20, 40) for b in (1, 4)}
    assert all(r["p50_ms"] > 0 and r["valid_ids"] == 1.0 and r["distinct_per_user"] == 20 for r in rows)


def test_serving_suite_quick_mode(tmp_path: Path) -> None:
    """The default profile (gpu): the model reads each event's time and rating and the request's time,
    every plan but the HF encoder (ids only, against the ids-only twin) is fed contexts."""
    report = _run("bench_serve_suite.py", tmp_path / "suite.json")
    assert {"device", "torch", "config", "targets", "step", "all_users", "profile", "generative", "verdict"} <= set(report)
    config = report["config"]
    assert config["profile"] == "gpu" and config["context_fields"] == ["ts", "rating", "request_time"]
    assert config["context_features"] == {"time_gaps": True, "ratings": True, "time_bias": True, "query_time": True,
                                          "query_gap_floor": 3600}
    assert config["model_settings"]["time_bias"] and config["causal"] and config["hf_eager_fp32"].startswith("ids-only encoder")
    plans = {r["plan"] for r in report["step"]}
    assert {"hf_eager_fp32", "lean_eager_fp32", "prev_triton_graph", "prev_sdpa_graph", "new_plan_graph", "fast_model"} <= plans
    assert all("error" not in r and r["topk_overlap"] == 1.0 for r in report["step"])  # fp32 on a CPU: the same top-k
    assert all((r["model"] == "ids-only encoder" and "topk_reference" in r) if r["plan"] == "hf_eager_fp32"
               else (r["model"] == "profile gpu" and "topk_reference" not in r) for r in report["step"])
    users = report["all_users"]
    assert users["users"] == 40 and set(users["plans"]) == {"prev_fast_model", "new_fast_model"}
    assert all(p["topk_overlap"] == 1.0 and p["p50_s"] > 0 for p in users["plans"].values())
    assert report["profile"]["b4"]["top"] and report["profile"]["b4"]["kernel_ms_per_step"] > 0
    assert report["generative"]["runs"]["vocab_128"]["rows"] and report["generative"]["ratios"]
    assert {r["target"] for r in report["verdict"]} >= {"all_users_s", "generative_ratio"}


def test_serving_suite_ids_only_profile(tmp_path: Path) -> None:
    """``--profile gpu-ids``: the ids-only model, the HF encoder computing the same function (the step alone)."""
    report = _run("bench_serve_suite.py", tmp_path / "ids.json", "--profile", "gpu-ids", "--sections", "step",
                  "--only", "hf_eager_fp32", "lean_eager_fp32", "new_plan_graph", "fast_model")
    assert report["config"]["profile"] == "gpu-ids" and report["config"]["context_fields"] == []
    assert {r["plan"] for r in report["step"]} == {"hf_eager_fp32", "lean_eager_fp32", "new_plan_graph", "fast_model"}
    assert all("error" not in r and r["topk_overlap"] == 1.0 and "topk_reference" not in r for r in report["step"])


def test_context_benchmark_quick_mode(tmp_path: Path) -> None:
    report = _run("bench_context.py", tmp_path / "context.json")
    rows = {(r["profile"], r["input"], r["batch"]): r for r in report["rows"]}
    assert set(rows) == {(p, i, b) for p, i in (("gpu", "events"), ("gpu-ids", "ids"), ("gpu-ids", "events")) for b in (1, 4)}
    assert all(r["context_fields"] == ["ts", "rating", "request_time"] for (p, _, _), r in rows.items() if p == "gpu")
    assert all(r["context_fields"] == [] for (p, _, _), r in rows.items() if p == "gpu-ids")
    assert all(r["top20_overlap_vs_fp32_eager"] == 1.0 and r["recommend_ms"] > 0 for r in rows.values())  # fp32 on a CPU
    assert all(("step_ms" in r) == (key[:2] != ("gpu-ids", "events")) for key, r in rows.items())
