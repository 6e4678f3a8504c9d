"""Attention rollout properties and the attention-sink criterion (pure functions, no models)."""

from __future__ import annotations

import math

import pytest
import torch

from attnviz.methods.rollout import attention_rollout, fuse_heads, rollout_step
from attnviz.analysis.sinks import (
    FACTOR, SinkPatch, detect_sinks, find_sinks, late_layers, neighbour_max, shares, sink_mask, without_sinks,
)
from attnviz.errors import UsageError


def random_attention(layers=3, heads=2, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(layers, heads, n, n, generator=g) * 3, dim=-1)


# ---------------------------------------------------------------------------
# rollout


def test_identity_attention_gives_identity_rollout():
    n = 6
    eye = torch.eye(n).expand(4, 3, n, n).clone()
    assert torch.allclose(attention_rollout(eye), torch.eye(n))
    for fusion in ("mean", "max", "min"):
        assert torch.allclose(attention_rollout(eye, fusion, 0.3, (0,)), torch.eye(n))


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
def test_every_step_is_row_stochastic(fusion, discard):
    attn = random_attention()
    for layer in range(attn.shape[0]):
        step = rollout_step(fuse_heads(attn[layer], fusion), discard, (0,))
        assert torch.allclose(step.sum(dim=-1), torch.ones(step.shape[0]), atol=1e-6)
        assert (step >= 0).all()
    r = attention_rollout(attn, fusion, discard, (0,))
    assert torch.allclose(r.sum(dim=-1), torch.ones(r.shape[0]), atol=1e-5)


def test_one_layer_without_discarding_is_half_a_plus_half_identity():
    attn = random_attention(layers=1, heads=1)
    a = attn[0, 0]
    assert torch.allclose(attention_rollout(attn), 0.5 * a + 0.5 * torch.eye(a.shape[0]), atol=1e-6)


def test_rollout_is_the_product_from_first_to_last_layer():
    attn = random_attention(layers=3, heads=4)
    eye = torch.eye(attn.shape[-1])
    steps = [0.5 * attn[l].mean(0) + 0.5 * eye for l in range(3)]
    steps = [s / s.sum(-1, keepdim=True) for s in steps]
    assert torch.allclose(attention_rollout(attn), steps[2] @ steps[1] @ steps[0], atol=1e-6)


def test_discarding_never_touches_the_protected_cls_column():
    attn = random_attention(layers=1, heads=1, n=9)
    fused = attn[0, 0].clone()
    fused[:, 0] = 1e-6  # the weakest weights of all sit in the [CLS] column
    fused = fused / fused.sum(-1, keepdim=True)
    step = rollout_step(fused, 0.8, (0,))
    assert (step[:, 0] > 0).all()
    unprotected = rollout_step(fused, 0.8, ())
    assert (unprotected[1:, 0] == 0).all()
    # the fused input is not modified
    assert torch.allclose(fused.sum(-1), torch.ones(9))


def test_bad_rollout_settings_are_usage_errors():
    with pytest.raises(UsageError):
        fuse_heads(torch.ones(2, 3, 3), "median")
    with pytest.raises(UsageError):
        rollout_step(torch.eye(3), 1.0)


# ---------------------------------------------------------------------------
# sinks


def blob(rows=8, cols=8, center=(4, 4), width=1.5):
    r = torch.arange(rows, dtype=torch.float64)[:, None]
    c = torch.arange(cols, dtype=torch.float64)[None, :]
    return torch.exp(-((r - center[0]) ** 2 + (c - center[1]) ** 2) / (2 * width**2)) + 0.01


def test_late_layers_is_the_last_third():
    assert list(late_layers(12)) == [8, 9, 10, 11]
    assert list(late_layers(24)) == list(range(16, 24))
    assert list(late_layers(2)) == [1]
    assert list(late_layers(1)) == [0]


def test_shares_sum_to_one_and_neighbour_max():
    m = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s = shares(m)
    assert math.isclose(float(s.sum()), 1.0)
    assert neighbour_max(m).tolist() == [[4.0, 4.0], [4.0, 3.0]]
    assert shares(torch.zeros(2, 2)).tolist() == [[0.25, 0.25], [0.25, 0.25]]


def test_a_single_isolated_spike_is_a_sink():
    m = torch.full((16, 16), 1.0)
    m[2, 8] = 60.0  # 60 / (255 + 60) = 19% of the mass, ~49x uniform
    sinks = find_sinks(m)
    assert [(s.row, s.col) for s in sinks] == [(2, 8)]
    assert math.isclose(sinks[0].share, 60 / 315, rel_tol=1e-6)
    assert sinks[0].share > FACTOR / 256


def test_an_object_is_not_a_sink():
    # a smooth blob: its peak is many times uniform, but its neighbours are bright too
    assert find_sinks(blob(14, 14, (6, 7), 1.2)) == []
    assert find_sinks(torch.ones(14, 14)) == []


def test_a_spike_below_the_factor_is_not_a_sink():
    m = torch.ones(16, 16)
    m[3, 3] = 5.0  # 5 / 260 ~ 4.9x uniform < 10x
    assert find_sinks(m) == []
    assert [(s.row, s.col) for s in find_sinks(m, factor=4.0)] == [(3, 3)]


def test_a_spike_next_to_a_bright_patch_is_not_isolated():
    m = torch.ones(16, 16)
    m[5, 5] = 60.0
    m[5, 6] = 30.0  # the spike is only 2x its brightest neighbour
    assert find_sinks(m) == []


def test_two_sinks_and_the_gap_rule():
    m = torch.ones(16, 16)
    m[1, 1], m[10, 12] = 80.0, 70.0
    assert {(s.row, s.col) for s in find_sinks(m)} == {(1, 1), (10, 12)}
    # a third spike too weak to be a sink (2.5x uniform) does not hide the two that are
    m[6, 6] = 4.0
    assert {(s.row, s.col) for s in find_sinks(m)} == {(1, 1), (10, 12)}
    m[6, 6] = 50.0
    assert {(s.row, s.col) for s in find_sinks(m)} == {(1, 1), (10, 12), (6, 6)}
    assert {(s.row, s.col) for s in find_sinks(m, max_sinks=2)} == set()  # 70 is not 2x the next (50)
    m[6, 6] = 20.0
    assert {(s.row, s.col) for s in find_sinks(m, max_sinks=2)} == {(1, 1), (10, 12)}


def test_a_spike_that_does_not_dominate_the_colour_scale_is_not_a_sink():
    m = blob(16, 16, (10, 10), 1.5) * 60  # an object whose peak is 60
    m[2, 2] = 80.0  # isolated, far above uniform, but not 2x the object
    assert find_sinks(m) == []
    m[2, 2] = 200.0
    assert [(s.row, s.col) for s in find_sinks(m)] == [(2, 2)]


def test_detect_sinks_merges_attention_and_rollout():
    late = torch.ones(4, 3, 8, 8)  # [layers, heads, rows, cols]
    late[:, :, 0, 7] = 40.0
    roll = torch.ones(8, 8)
    roll[6, 1] = 50.0
    roll[0, 7] = 45.0
    found = detect_sinks(late, roll)
    assert {(s.row, s.col) for s in found} == {(0, 7), (6, 1)}
    by_cell = {(s.row, s.col): s for s in found}
    assert by_cell[(6, 1)].signal == "rollout"
    assert found == sorted(found, key=lambda s: -s.share)
    assert detect_sinks(None, None) == []
    assert detect_sinks(torch.ones(8, 8), torch.ones(8, 8)) == []


def test_without_sinks_masks_only_the_sinks():
    m = torch.arange(16.0).reshape(4, 4)
    sinks = [SinkPatch(1, 2, 0.5, "rollout")]
    out = without_sinks(m, sinks)
    assert math.isnan(float(out[1, 2]))
    assert int(torch.isnan(out).sum()) == 1
    assert sink_mask((4, 4), sinks).sum() == 1
    assert sinks[0].to_dict() == {"row": 1, "col": 2, "share": 0.5, "signal": "rollout"}
