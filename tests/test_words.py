"""Word merging (Clark et al. 2019) and special-token hiding: properties."""

import torch

from attnviz.analysis.select import ViewSpec, find_focus, prepare, prepare_rows
from attnviz.analysis.words import word_units
from attnviz.types import TokenInfo


def info():
    # "[CLS] un ##believ ##able cats [SEP]" : words 0 = unbelievable, 1 = cats
    text = "unbelievable cats"
    return TokenInfo(
        text=text,
        tokens=("[CLS]", "un", "##believ", "##able", "cats", "[SEP]"),
        word_ids=(None, 0, 0, 0, 1, None),
        offsets=((0, 0), (0, 2), (2, 8), (8, 12), (13, 17), (0, 0)),
        special=(True, False, False, False, False, True),
    )


def random_attention(*shape):
    torch.manual_seed(0)
    return torch.softmax(torch.randn(*shape), dim=-1)


def test_pieces_map_to_words():
    units = word_units(info())
    assert units.labels == ("[CLS]", "unbelievable", "cats", "[SEP]")
    assert units.groups == ((0,), (1, 2, 3), (4,), (5,))
    assert units.special == (True, False, False, True)


def test_merged_rows_sum_to_one_and_follow_clark():
    a = random_attention(2, 3, 6, 6)
    vm = prepare(a, info(), info(), ViewSpec(words=True))
    assert vm.attn.shape == (2, 3, 4, 4)
    assert torch.allclose(vm.attn.sum(-1), torch.ones(2, 3, 4), atol=1e-6)
    # TO a word = sum over its pieces; FROM a word = mean over its pieces
    expected = a[..., 1:4, :][..., 1:4].sum(-1).mean(-1)
    assert torch.allclose(vm.attn[..., 1, 1], expected, atol=1e-6)


def test_hide_special_renormalises():
    a = random_attention(6, 6)
    vm = prepare(a, info(), info(), ViewSpec(hide_special=True))
    assert vm.query_units.labels == ("un", "##believ", "##able", "cats")
    assert torch.allclose(vm.attn.sum(-1), torch.ones(4), atol=1e-6)
    sub = a[1:5, 1:5]
    assert torch.allclose(vm.attn, sub / sub.sum(-1, keepdim=True), atol=1e-6)


def test_focus_word_rows():
    a = random_attention(2, 2, 6, 6)
    positions = find_focus(info(), "UNBELIEVABLE", None, ViewSpec(words=True))
    assert positions == (1, 2, 3)
    rows, units = prepare_rows(a[:, :, list(positions)], list(positions), info(), ViewSpec(words=True))
    assert rows.shape == (2, 2, 4)
    assert torch.allclose(rows.sum(-1), torch.ones(2, 2), atol=1e-6)
