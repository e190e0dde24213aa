"""WeightEMA: hand-computed averages, the warm-up of the decay, swapping in and out, state round trip."""

from __future__ import annotations

import pytest
import torch

from lite_rec.train.ema import WeightEMA


def _linear(value: float) -> torch.nn.Linear:
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(value)
    return layer


def test_the_average_follows_the_warmed_up_decay() -> None:
    layer = _linear(0.0)
    ema = WeightEMA(layer, decay=0.5)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0) < 0.5
    with torch.no_grad():
        layer.weight.fill_(10.0)
    ema.update()  # 0.1 * 0 + 0.9 * 10
    torch.testing.assert_close(ema.shadow[0], torch.full((1, 2), 9.0))
    ema.steps = 100  # past the warm-up: the configured decay
    assert ema.current_decay() == 0.5
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema.update()  # 0.5 * 9 + 0.5 * 1
    torch.testing.assert_close(ema.shadow[0], torch.full((1, 2), 5.0))


def test_applied_swaps_the_average_in_and_the_live_weights_back() -> None:
    layer = _linear(0.0)
    ema = WeightEMA(layer, decay=0.9)
    with torch.no_grad():
        layer.weight.fill_(4.0)
    ema.update()
    with ema.applied():
        torch.testing.assert_close(layer.weight.detach(), torch.full((1, 2), 3.6))  # 0.1 * 0 + 0.9 * 4
    torch.testing.assert_close(layer.weight.detach(), torch.full((1, 2), 4.0))


def test_frozen_parameters_are_not_averaged_and_state_round_trips() -> None:
    model = torch.nn.Sequential(_linear(1.0), _linear(2.0))
    model[1].weight.requires_grad_(False)
    ema = WeightEMA(model, decay=0.99)
    assert ema.names == ["0.weight"]
    ema.update()
    again = WeightEMA(model, decay=0.99)
    again.load_state_dict(ema.state_dict())
    assert again.steps == 1
    torch.testing.assert_close(again.shadow[0], ema.shadow[0])
    model[1].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="EMA state is for parameters"):
        WeightEMA(model, decay=0.99).load_state_dict(ema.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_a_decay_that_averages_nothing_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="train.ema_decay must be in"):
        WeightEMA(_linear(0.0), decay)
