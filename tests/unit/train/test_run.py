"""train_model end to end on CPU with a tiny model: outputs, early stopping, stage 2, resume guards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from lite_rec.core.config import build_config
from lite_rec.core.errors import CacheMismatch, DataError
from lite_rec.train.checkpoint import load_model
from lite_rec.train.run import main, read_item_vectors, train_model

N_ITEMS = 30


def tiny_sequences(users: int = 24, seed: int = 0) -> pd.DataFrame:
    """Users who walk through the items in order from a random start: a learnable pattern."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        length, start = int(rng.integers(6, 14)), int(rng.integers(0, N_ITEMS))
        seq = [(start + k) % N_ITEMS + 1 for k in range(length)]
        rows.append({"user_idx": u, "user_id": f"u{u}", "train_seq": seq[:-2], "valid_item_idx": seq[-2],
                     "test_item_idx": seq[-1]})
    return pd.DataFrame(rows)


def tiny_vectors(dim: int = 12, seed: int = 0) -> torch.Tensor:
    vectors = torch.randn(N_ITEMS + 1, dim, generator=torch.Generator().manual_seed(seed))
    vectors[0] = 0
    return vectors


def tiny_overrides(**extra: object) -> list[str]:
    base = {"model.backbone": "lean", "model.d_model": 16, "model.n_layers": 1, "model.n_heads": 2,
            "model.d_ff": 32, "model.max_seq_len": 5, "model.dropout": 0.1, "train.batch_size": 8,
            "train.max_epochs": 2, "train.num_threads": 1, "train.checkpoint_every_steps": 3}
    return [f"{k}={v}" for k, v in {**base, **extra}.items()]


def _cfg(**extra: object):
    return build_config("ml-100k", tiny_overrides(**extra), profile="smoke")


def test_train_model_writes_a_loadable_model_metrics_and_history(tmp_path: Path) -> None:
    cfg = _cfg(**{"model.backbone": "t5-small", "train.strategy": "onepass"})
    result = train_model(cfg, tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    assert result.backbone_init == "random init (pretrained=false)" and not result.resumed
    assert [(h["stage"], h["epoch"]) for h in result.history] == [(1, 1), (1, 2)]
    assert {"loss", "lr", "seconds", "samples_per_s", "valid_recall_10", "valid_ndcg_10"} <= set(result.history[0])
    for key in ("valid_recall_10", "test_recall_20", "test_ndcg_10", "test_unmasked_ndcg_20", "best_epoch"):
        assert key in result.metrics
    assert result.metrics["test_users"] == 24.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == pytest.approx(result.metrics)
    assert len(json.loads((tmp_path / "history.json").read_text())) == 2
    loaded, meta = load_model(tmp_path)
    assert meta["spec"]["causal"] is True and meta["protocol"]["exclude_history"] is True
    assert meta["config"]["train"]["strategy"] == "onepass"
    # the model's settings are stored once: in the spec, not again beside the rest of the config
    assert "model" not in meta["config"] and meta["spec"]["config"] == cfg.model.to_dict()
    assert loaded.spec == result.model.spec
    items = torch.tensor([[3, 4, 5, 0, 0]])
    torch.testing.assert_close(loaded(items)[0], result.model(items)[0])


@pytest.mark.parametrize("strategy", ["sampling", "all"])
def test_every_strategy_trains(tmp_path: Path, strategy: str) -> None:
    result = train_model(_cfg(**{"train.strategy": strategy, "train.max_epochs": 1}), tiny_sequences(),
                         tiny_vectors(), tmp_path, progress=False)
    expected_samples = 24 if strategy == "sampling" else sum(len(s) - 1 for s in tiny_sequences()["train_seq"])
    assert result.history[0]["steps"] == -(-expected_samples // 8)


def test_id_only_model_needs_no_item_vectors(tmp_path: Path) -> None:
    result = train_model(_cfg(**{"model.item_repr": "id", "train.max_epochs": 1}), tiny_sequences(), None, tmp_path,
                         progress=False)
    assert "item_vectors" not in result.model.state_dict()


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path: Path) -> None:
    # lr so small that validation never changes: no strict improvement after the first evaluation
    cfg = _cfg(**{"train.lr": 1e-12, "train.max_epochs": 6, "train.patience": 2})
    result = train_model(cfg, tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    assert len(result.history) == 3 and result.stopped_early
    assert result.metrics["best_epoch"] == 1.0


def test_stage_two_trains_the_item_vectors(tmp_path: Path) -> None:
    vectors = tiny_vectors()
    cfg = _cfg(**{"train.finetune_epochs": 2, "train.finetune_lr": 1e-2})
    result = train_model(cfg, tiny_sequences(), vectors, tmp_path, progress=False)
    assert [h["stage"] for h in result.history] == [1, 1, 2, 2]
    assert result.history[2]["lr"] == 1e-2
    last = torch.load(tmp_path / "checkpoints" / "resume.pt", weights_only=True)
    assert last["done"] and last["state"]["stage"] == 2
    changed = (last["model"]["item_vectors"] - vectors).abs().sum(1)  # (N+1,)
    assert (changed[1:] > 0).all()  # every item's vector moved in stage 2


def test_a_finished_run_is_reloaded_not_retrained(tmp_path: Path) -> None:
    cfg = _cfg()
    first = train_model(cfg, tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    again = train_model(cfg, tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    assert again.resumed and again.history == first.history and again.metrics == first.metrics


def test_a_checkpoint_of_other_settings_is_refused(tmp_path: Path) -> None:
    train_model(_cfg(), tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    with pytest.raises(CacheMismatch, match=r"train\.lr: checkpoint 0\.002 vs now 0\.003"):
        train_model(_cfg(**{"train.lr": 0.003}), tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    with pytest.raises(CacheMismatch, match="item_vectors_sha256"):
        train_model(_cfg(), tiny_sequences(), tiny_vectors(seed=1), tmp_path, progress=False)


def test_item_vector_files_are_read_by_name_or_folder(tmp_path: Path) -> None:
    save_file({"vectors": tiny_vectors()}, str(tmp_path / "vectors.safetensors"))
    torch.testing.assert_close(read_item_vectors(tmp_path), tiny_vectors())
    save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(Exception, match="tensor named 'vectors'"):
        read_item_vectors(tmp_path / "two.safetensors")
    assert load_file(str(tmp_path / "vectors.safetensors"))["vectors"].shape == (N_ITEMS + 1, 12)


def test_cli_reports_a_missing_sequences_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--processed-dir", str(tmp_path / "ml-100k"), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "sequences.parquet does not exist" in capsys.readouterr().err


def test_stage_one_time_budget_ends_stage_one_and_stage_two_still_runs(tmp_path: Path) -> None:
    # a budget any epoch overruns: stage 1 stops after its first epoch, stage 2 runs in full
    cfg = _cfg(**{"train.max_epochs": 5, "train.max_stage1_minutes": 1e-9, "train.finetune_epochs": 2})
    result = train_model(cfg, tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    assert [h["stage"] for h in result.history] == [1, 2, 2]
    assert result.budget_exhausted and not result.stopped_early
    assert result.history[0]["eval_seconds"] > 0


def test_a_budget_that_is_never_reached_changes_nothing(tmp_path: Path) -> None:
    plain = train_model(_cfg(), tiny_sequences(), tiny_vectors(), tmp_path / "plain", progress=False)
    budget = train_model(_cfg(**{"train.max_stage1_minutes": 60.0}), tiny_sequences(), tiny_vectors(),
                         tmp_path / "budget", progress=False)
    assert len(budget.history) == len(plain.history) and not budget.budget_exhausted
    assert budget.metrics["test_recall_10"] == plain.metrics["test_recall_10"]


def test_ema_weights_are_validated_and_kept(tmp_path: Path) -> None:
    cfg = _cfg(**{"train.ema_decay": 0.9, "train.max_epochs": 1})
    result = train_model(cfg, tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    last = torch.load(tmp_path / "checkpoints" / "resume.pt", weights_only=True)
    averaged = dict(zip(last["ema"]["names"], last["ema"]["shadow"]))
    kept = load_file(str(tmp_path / "model.safetensors"))
    assert averaged.keys() <= kept.keys() and last["ema"]["steps"] == result.history[0]["steps"]
    for name, tensor in averaged.items():  # one epoch, so the best weights are the epoch's average ...
        torch.testing.assert_close(kept[name], tensor)
    assert any(not torch.equal(last["model"][n], t) for n, t in averaged.items())  # ... not the live weights
    assert result.metrics["valid_recall_10"] == pytest.approx(result.history[0]["valid_recall_10"])


def killed_then_resumed(cfg, sequences: pd.DataFrame, out: Path, monkeypatch: pytest.MonkeyPatch, die_at_step: int):
    """Train until the ``die_at_step``-th optimizer step raises (a kill), then run the same call
    again: the result of the resumed run (which must say it resumed)."""
    import lite_rec.train.trainer as trainer_module

    real_step, calls = trainer_module.train_step, []

    def step_then_die(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == die_at_step:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, sequences, tiny_vectors(), out, progress=False)
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    resumed = train_model(cfg, sequences, tiny_vectors(), out, progress=False)
    assert resumed.resumed
    return resumed


@pytest.mark.parametrize("extra", [{}, {"train.strategy": "onepass", "model.time_gaps": "true", "model.ratings": "true",
                                        "model.time_bias": "true", "model.history_logit": "true"}],
                         ids=["ema", "ema+context+history-logit"])
def test_an_interrupted_ema_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           extra: dict[str, str]) -> None:
    cfg = _cfg(**{"train.ema_decay": 0.9, "train.max_epochs": 3, "train.finetune_epochs": 1, **extra})
    sequences = _timed(tiny_sequences(), tied=False)
    sequences["train_rating"] = [[float(1 + i % 5) for i in range(len(s))] for s in sequences["train_seq"]]
    sequences["valid_rating"] = 3.0
    whole = train_model(cfg, sequences, tiny_vectors(), tmp_path / "whole", progress=False)
    # 3 steps per epoch: dies in the middle of epoch 3, its first step is replayed
    resumed = killed_then_resumed(cfg, sequences, tmp_path / "cut", monkeypatch, die_at_step=8)
    assert resumed.metrics["test_recall_10"] == pytest.approx(whole.metrics["test_recall_10"], abs=1e-6)
    kept, reference = load_file(str(tmp_path / "cut" / "model.safetensors")), load_file(str(tmp_path / "whole" / "model.safetensors"))
    for name in reference:
        torch.testing.assert_close(kept[name], reference[name], atol=1e-5, rtol=1e-5)


def test_every_epoch_logs_one_plain_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="lite_rec.train.trainer"):
        result = train_model(_cfg(), tiny_sequences(), tiny_vectors(), tmp_path, progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "lite_rec.train.trainer"]
    assert len(lines) == len(result.history) == 2
    assert lines[1].startswith("stage 1 epoch 2/2: loss ")
    assert f"valid_recall_10 {result.history[1]['valid_recall_10']:.4f}" in lines[1]


@pytest.mark.parametrize("strategy", ["onepass", "all"])
def test_history_logit_learns_that_users_never_come_back_and_lifts_the_unmasked_ranking(tmp_path: Path,
                                                                                       strategy: str) -> None:
    """The tiny users never repeat an item, so the learned score of seen items must go down;
    it is saved with the model, and the unmasked evaluation (which adds it over the whole
    history) comes closer to the masked one than in the same run without it."""
    runs = {}
    for on in (False, True):
        cfg = _cfg(**{"train.strategy": strategy, "train.max_epochs": 3, "train.lr": 0.01,
                      "model.history_logit": str(on).lower()})
        runs[on] = train_model(cfg, tiny_sequences(), tiny_vectors(), tmp_path / f"{strategy}-{on}", progress=False)
    learned = runs[True].model.history_logit().item()
    assert learned < -1.0 and runs[True].metrics["history_logit"] == pytest.approx(learned)
    assert "history_logit" not in runs[False].metrics
    loaded, meta = load_model(tmp_path / f"{strategy}-True")
    assert meta["spec"]["config"]["history_logit"] is True and loaded.history_logit().item() == pytest.approx(learned)
    # the masked ranking never sees the logit; the unmasked one gets closer to it
    gap = {on: r.metrics["test_masked_recall_10"] - r.metrics["test_unmasked_recall_10"] for on, r in runs.items()}
    assert gap[True] < gap[False] if strategy == "onepass" else gap[True] <= gap[False]  # "all": no gap to close here


def _timed(sequences: pd.DataFrame, tied: bool) -> pd.DataFrame:
    """Timestamps: every item of a user at one second (tied) or each at its own."""
    out = sequences.copy()
    out["train_ts"] = [[0] * len(s) if tied else list(range(len(s))) for s in out["train_seq"]]
    out["valid_ts"] = [0 if tied else len(s) for s in out["train_seq"]]
    return out


def test_input_contexts_train_evaluate_and_bundle_with_the_fields_they_read(tmp_path: Path) -> None:
    from lite_rec.infer.bundle import load_bundle
    from lite_rec.train.export import build_bundle

    timed = _timed(tiny_sequences(), tied=False)
    timed["train_rating"] = [[float(1 + i % 5) for i in range(len(s))] for s in timed["train_seq"]]
    timed["valid_rating"] = 5.0
    cfg = _cfg(**{"train.strategy": "onepass", "train.max_epochs": 1, "model.time_gaps": "true", "model.ratings": "true"})
    result = train_model(cfg, timed, tiny_vectors(), tmp_path / "run", progress=False)
    assert result.model.spec.config.uses_context and result.metrics["test_users"] == 24.0
    loaded, meta = load_model(tmp_path / "run")
    assert meta["spec"]["config"]["time_gaps"] is True and meta["spec"]["config"]["ratings"] is True
    assert loaded.context_embedding.weight.shape[0] == 51
    biased = _cfg(**{"train.strategy": "onepass", "train.max_epochs": 1, "model.time_bias": "true"})  # tiny models are lean
    result = train_model(biased, timed, tiny_vectors(), tmp_path / "biased", progress=False)
    loaded, meta = load_model(tmp_path / "biased")
    assert meta["spec"]["config"]["time_bias"] is True and not hasattr(loaded, "context_embedding")
    torch.testing.assert_close(loaded.time_bias.weight, result.model.time_bias.weight.cpu())
    assert loaded.time_bias.weight.abs().sum() > 0  # trained away from its zero start
    dated = timed.assign(train_ts=[[1_000_000_000 + 40 * 86_400 * i for i in range(len(s))] for s in timed["train_seq"]],
                         valid_ts=[1_000_000_000 + 40 * 86_400 * len(s) for s in timed["train_seq"]])  # 40 days apart
    queried = _cfg(**{"train.strategy": "onepass", "train.max_epochs": 1, "model.query_time": "true"})
    result = train_model(queried, dated.assign(test_ts=dated["valid_ts"] + 60), tiny_vectors(), tmp_path / "queried",
                         progress=False)
    loaded, meta = load_model(tmp_path / "queried")
    assert meta["spec"]["config"]["query_time"] is True and result.metrics["test_users"] == 24.0
    torch.testing.assert_close(loaded.query_gap_embedding.weight, result.model.query_gap_embedding.weight.cpu())
    assert loaded.query_gap_embedding.weight.abs().sum() > 0  # trained away from its zero start
    with pytest.raises(DataError, match=r"train_rating; model.time_gaps / model.ratings / model.time_bias / "
                                         r"model.query_time read them"):
        train_model(cfg, timed.drop(columns=["train_rating"]), tiny_vectors(), tmp_path / "old", progress=False)
    # they bundle like any other model, and the bundle says which request fields each reads
    data_cfg = _cfg(**{"model.time_gaps": "true", "data_dir": str(tmp_path / "data")})
    data_cfg.processed_dir.mkdir(parents=True)
    pd.DataFrame({"item_idx": range(1, N_ITEMS + 1), "item_id": [f"i{i}" for i in range(1, N_ITEMS + 1)],
                  "title": "t"}).to_parquet(data_cfg.processed_dir / "items.parquet")
    dated.to_parquet(data_cfg.processed_dir / "sequences.parquet")
    for run, fields in (("run", ["ts", "rating"]), ("biased", ["ts"]), ("queried", ["ts", "request_time"])):
        bundle = load_bundle(build_bundle(data_cfg, tmp_path / run, tmp_path / f"bundle-{run}"))
        assert bundle.context_fields == fields
        assert json.loads((bundle.path / "manifest.json").read_text())["context_fields"] == fields
