"""Distillation from teacher models (lite_rec/train/distill.py): soft targets, their loss, and training with them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lite_rec.core.config import ConfigError
from lite_rec.core.errors import CacheMismatch, DataError
from lite_rec.data.sequences import build_sequence_store
from lite_rec.model.scoring import IGNORE_INDEX
from lite_rec.train.batches import BatchMaker, plan_onepass
from lite_rec.train.distill import SoftTargets, check_teachers, load_teachers, soft_cross_entropy, teacher_soft_targets
from lite_rec.train.run import train_model
from tests.helpers.tiny_models import tiny_model
from tests.unit.train.test_run import N_ITEMS, _cfg, killed_then_resumed, tiny_sequences, tiny_vectors

IGN = IGNORE_INDEX


def test_soft_cross_entropy_matches_a_hand_computed_value() -> None:
    logits = torch.tensor([[[float("-inf"), 0.0, math.log(3.0), 0.0],  # softmax over items 1..3: 1/5, 3/5, 1/5
                            [float("-inf"), 0.0, 0.0, 0.0]]])  # (B=1, L=2, N+1=4)
    items = torch.tensor([[[2, 1], [3, 1]]])  # (1, 2, K=2)
    probs = torch.tensor([[[0.75, 0.25], [0.0, 0.0]]])  # the second position has no soft target
    expected = -(0.75 * math.log(3 / 5) + 0.25 * math.log(1 / 5))  # mean over the one position that has one
    assert float(soft_cross_entropy(logits, items, probs)) == pytest.approx(expected, rel=1e-6)
    masked = logits.clone()
    masked[0, 0, 1] = float("-inf")  # an item at -inf (as the padding column) is skipped, not infinite
    value = float(soft_cross_entropy(masked, items, probs))
    assert math.isfinite(value) and value == pytest.approx(-0.75 * math.log(3 / 4), rel=1e-6)


def test_soft_cross_entropy_at_a_temperature_is_t_squared_times_the_flattened_loss() -> None:
    logits = torch.tensor([[[float("-inf"), 0.0, math.log(9.0), 0.0]]])  # at T=2: softmax over items 1..3 is 1/5, 3/5, 1/5
    items, probs = torch.tensor([[[2, 1]]]), torch.tensor([[[0.75, 0.25]]])  # (1, 1, K=2)
    expected = 4 * -(0.75 * math.log(3 / 5) + 0.25 * math.log(1 / 5))
    assert float(soft_cross_entropy(logits, items, probs, 2.0)) == pytest.approx(expected, rel=1e-6)


def _store_and_plan():
    store = build_sequence_store([[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11]])
    return store, plan_onepass(store, max_len=4)


# the teacher's softmax as it is and at a temperature
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_teacher_targets_are_each_positions_top_items_without_the_users_history(temperature: float) -> None:
    store, plan = _store_and_plan()
    teacher = tiny_model(n_items=12, window=4, causal=True, seed=3)
    soft = teacher_soft_targets([teacher], store, plan, max_len=4, contexts_of=lambda t: None, top_k=3,
                                batch_size=2, device=torch.device("cpu"), bf16=False, temperature=temperature)
    maker = BatchMaker(store, 4)
    maker.set_plan(plan, np.arange(len(plan))[::-1].copy())  # a shuffled order reads the same rows
    items, targets = maker.batch(0, len(plan))
    got_items, got_probs = soft.batch(maker.batch_windows(0, len(plan)), targets)  # (S, L, K)
    flat, checked = store.flat.tolist(), 0
    for row, window in enumerate(maker.batch_windows(0, len(plan)).tolist()):
        first = int(plan.first[window])
        for pos in range(4):
            if int(targets[row, pos]) == IGN:
                assert float(got_probs[row, pos].sum()) == 0.0
                continue
            at = int(plan.start[window]) + pos  # flat index of the position's input item
            history = flat[first:at + 1]  # every item the user has at this position
            context = flat[max(first, at - pos):at + 1]  # what the window shows the teacher
            with torch.no_grad():
                scores = teacher(torch.tensor([context]))[0][0]  # (N+1,) causal: the last prefix
            scores[history] = float("-inf")
            expected = torch.softmax(scores / temperature, -1).topk(3)
            assert got_items[row, pos].tolist() == expected.indices.tolist()
            torch.testing.assert_close(got_probs[row, pos], expected.values / expected.values.sum(), atol=2e-3, rtol=0)
            assert not set(got_items[row, pos].tolist()) & set(history)
            checked += 1
    assert checked == plan.n_targets == 8  # 6 + 2 next items; the one-item user has none
    assert 0 < soft.coverage < 1


def test_the_whole_catalogue_as_top_k_keeps_all_the_mass() -> None:
    store, plan = _store_and_plan()
    teachers = [tiny_model(n_items=12, window=4, causal=True, seed=s) for s in (1, 2)]
    soft = teacher_soft_targets(teachers, store, plan, max_len=4, contexts_of=lambda t: None, top_k=50,
                                batch_size=8, device=torch.device("cpu"), bf16=False)
    assert soft.items.shape == (8, 12) and soft.coverage == pytest.approx(1.0, abs=1e-5)  # K capped at N


def test_a_higher_temperature_leaves_less_of_the_teachers_mass_in_the_top_items() -> None:
    store, plan = _store_and_plan()
    teacher = tiny_model(n_items=12, window=4, causal=True, seed=5)
    coverage = [teacher_soft_targets([teacher], store, plan, max_len=4, contexts_of=lambda t: None, top_k=2,
                                     batch_size=8, device=torch.device("cpu"), bf16=False, temperature=t).coverage
                for t in (0.5, 1.0, 4.0)]
    assert coverage[0] > coverage[1] > coverage[2] > 2 / 12  # flatter, and never below a uniform share


def _backward(sequences: pd.DataFrame) -> pd.DataFrame:
    """The same users walking the items the other way: a teacher that predicts the previous item."""
    out = sequences.copy()
    for column in ("train_seq",):
        out[column] = [[(N_ITEMS - i) % N_ITEMS + 1 for i in s] for s in out[column]]
    out["valid_item_idx"] = [(N_ITEMS - i) % N_ITEMS + 1 for i in out["valid_item_idx"]]
    out["test_item_idx"] = [(N_ITEMS - i) % N_ITEMS + 1 for i in out["test_item_idx"]]
    return out


def _onepass(**extra: object):
    return _cfg(**{"train.strategy": "onepass", "train.max_epochs": 8, "train.lr": 0.01, "model.dropout": 0.0, **extra})


@pytest.fixture(scope="module")
def backward_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher")
    train_model(_onepass(), _backward(tiny_sequences(users=48)), tiny_vectors(), out, progress=False)
    return out


def test_a_student_at_weight_one_follows_its_teacher_not_its_labels(tmp_path: Path, backward_teacher: Path) -> None:
    data = tiny_sequences(users=48)
    own = train_model(_onepass(), data, tiny_vectors(), tmp_path / "own", progress=False)
    student = train_model(_onepass(**{"train.distill_from": f"[{backward_teacher}]", "train.distill_weight": 1.0,
                                      "train.distill_top_k": 3}),
                          data, tiny_vectors(), tmp_path / "student", progress=False)
    half = train_model(_onepass(**{"train.distill_from": f"[{backward_teacher}]", "train.distill_weight": 0.5}),
                       data, tiny_vectors(), tmp_path / "half", progress=False)
    assert own.metrics["test_recall_10"] > 0.5  # the forward walk is learnable from the labels
    assert student.metrics["test_recall_10"] < own.metrics["test_recall_10"] - 0.3  # the teacher walks backward
    assert half.history[0]["loss"] != pytest.approx(own.history[0]["loss"], rel=1e-3)  # both terms count
    assert 0 < student.metrics["distill_top_k_mass"] <= 1 and student.metrics["distill_seconds"] > 0
    hot = train_model(_onepass(**{"train.distill_from": f"[{backward_teacher}]", "train.distill_weight": 1.0,
                                  "train.distill_top_k": 3, "train.distill_temperature": 3.0}),
                      data, tiny_vectors(), tmp_path / "hot", progress=False)
    assert hot.metrics["test_recall_10"] < own.metrics["test_recall_10"] - 0.3  # still the teacher's walk
    assert hot.metrics["distill_top_k_mass"] < student.metrics["distill_top_k_mass"]  # the teacher scored flatter
    assert hot.history[0]["loss"] != pytest.approx(student.history[0]["loss"], rel=1e-3)  # and the loss at T


def test_distilled_runs_resume_and_refuse_other_teachers(tmp_path: Path, backward_teacher: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _onepass(**{"train.distill_from": f"[{backward_teacher}]", "train.max_epochs": 3})
    data = tiny_sequences()
    whole = train_model(cfg, data, tiny_vectors(), tmp_path / "whole", progress=False)
    resumed = killed_then_resumed(cfg, data, tmp_path / "cut", monkeypatch, die_at_step=5)  # inside epoch 2 of 3
    assert resumed.metrics["test_recall_10"] == pytest.approx(whole.metrics["test_recall_10"], abs=1e-6)
    assert resumed.history[-1]["loss"] == pytest.approx(whole.history[-1]["loss"], rel=1e-5)
    other = tmp_path / "other"  # the same folder name does not matter: its weights do
    train_model(_onepass(**{"train.max_epochs": 1}), tiny_sequences(seed=5), tiny_vectors(), other, progress=False)
    with pytest.raises(CacheMismatch, match="teachers_sha256"):
        train_model(_onepass(**{"train.distill_from": f"[{other}]", "train.max_epochs": 3}), data, tiny_vectors(),
                    tmp_path / "cut", progress=False)


def test_teachers_that_do_not_fit_are_refused_by_name(tmp_path: Path, backward_teacher: Path) -> None:
    def load(path: Path, **kw: object) -> None:
        args = {"n_items": N_ITEMS, "dataset": "ml-100k", "device": torch.device("cpu"), **kw}
        load_teachers([path], **args)

    with pytest.raises(DataError, match=rf"distill_from: {tmp_path / 'nowhere'}: no model.json"):
        load(tmp_path / "nowhere")
    with pytest.raises(DataError, match=rf"distill_from: {tmp_path / 'nowhere'}: no model.json"):  # not a traceback
        train_model(_onepass(**{"train.distill_from": f"[{tmp_path / 'nowhere'}]"}), tiny_sequences(), tiny_vectors(),
                    tmp_path / "run", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError, match="model.json is not readable JSON"):
        check_teachers([broken], "ml-100k")
    with pytest.raises(DataError, match="trained on 'ml-100k', this run is 'ml-1m'"):
        load(backward_teacher, dataset="ml-1m")
    with pytest.raises(DataError, match="scores 30 items, this run's data has 31"):
        load(backward_teacher, n_items=31)
    old = tmp_path / "old"  # a teacher saved before the model's settings moved into its spec
    old.mkdir()
    for name in ("model.json", "model.safetensors"):
        (old / name).write_bytes((backward_teacher / name).read_bytes())
    meta = json.loads((old / "model.json").read_text())
    meta["spec"].update(meta["spec"].pop("config"))  # the settings beside n_items, as they were
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=rf"distill_from: {old}: this model was saved by an older lite-rec"):
        load(old)
    flat = tmp_path / "flat"
    train_model(_cfg(**{"train.max_epochs": 1, "train.strategy": "all"}), tiny_sequences(), tiny_vectors(), flat,
                progress=False)
    with pytest.raises(DataError, match="not trained one-pass"):
        load(flat)


@pytest.mark.parametrize("strategy", ["sampling", "all"])
def test_distillation_is_refused_where_the_windows_are_not_fixed(strategy: str) -> None:
    with pytest.raises(ConfigError, match=f"needs train.strategy=onepass \\(got {strategy}\\)"):
        _cfg(**{"train.strategy": strategy, "train.distill_from": "[/tmp/t]"})
    _cfg(**{"train.strategy": "onepass", "train.distill_from": "[/tmp/t]"})  # one-pass windows: fine


def test_soft_targets_batch_reads_rows_by_window_and_position() -> None:
    soft = SoftTargets(items=torch.arange(10, dtype=torch.int32)[:, None], probs=torch.ones(10, 1).half(),
                       first_row=torch.tensor([0, 3, 5]), coverage=1.0)  # windows of 4, 2, 5 positions from 0, 1, 0
    targets = torch.tensor([[1, 1, 1, IGN], [IGN, 1, 1, IGN]])  # window 0 positions 0-2; window 1 positions 1-2
    items, probs = soft.batch(torch.tensor([0, 1]), targets)
    assert items[..., 0].tolist() == [[0, 1, 2, 0], [0, 4, 5, 0]]
    assert probs[..., 0].tolist() == [[1, 1, 1, 0], [0, 1, 1, 0]]


def test_teachers_with_different_inputs_each_read_their_own_and_are_averaged(tmp_path: Path) -> None:
    from lite_rec.model.context import item_contexts
    from lite_rec.train.checkpoint import load_model
    from tests.unit.train.test_run import _timed

    timed = _timed(tiny_sequences(), tied=False)
    for name, extra in (("plain", {}), ("gaps", {"model.time_gaps": "true"})):
        train_model(_onepass(**{"train.max_epochs": 1, **extra}), timed, tiny_vectors(), tmp_path / name, progress=False)
    teachers = [load_model(tmp_path / name)[0] for name in ("plain", "gaps")]
    store = build_sequence_store(timed["train_seq"])
    plan = plan_onepass(store, max_len=5)

    def dense(group: list, data: pd.DataFrame = timed) -> torch.Tensor:  # (P, N+1) every item kept (K = N)
        soft = teacher_soft_targets(group, store, plan, max_len=5, top_k=N_ITEMS, batch_size=8,
                                    contexts_of=lambda t: item_contexts(data, **t.spec.config.context_features),
                                    device=torch.device("cpu"), bf16=False)
        assert soft.coverage == pytest.approx(1.0, abs=1e-4)
        return torch.zeros(len(soft.items), N_ITEMS + 1).scatter(1, soft.items.long(), soft.probs.float())

    alone = [dense([t]) for t in teachers]
    tied = _timed(tiny_sequences(), tied=True)  # other gaps: the second teacher must score differently
    assert not torch.allclose(dense([teachers[1]], tied), alone[1], atol=1e-3)
    torch.testing.assert_close(dense([teachers[0]], tied), alone[0])  # the first reads no time
    torch.testing.assert_close(dense(teachers), (alone[0] + alone[1]) / 2, atol=2e-3, rtol=0)
