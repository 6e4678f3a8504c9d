"""Text views (attnviz.render.text): numbers in the figures, not just that figures exist."""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from attnviz.analysis.focus import strongest_targets
from attnviz.analysis.select import ViewSpec, find_focus, prepare, prepare_rows, units_for
from attnviz.errors import UsageError
from attnviz.render import common
from attnviz.analysis.focus import analyse_focus
from attnviz.render.text import causal_mask, focus_view, head_view, maps_for, matrix_view, model_view

from tiny import TEXT

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

PIECES = ViewSpec()
WORDS = ViewSpec(words=True)
HIDE = ViewSpec(hide_special=True)
WORDS_HIDE = ViewSpec(words=True, hide_special=True)


@pytest.fixture(scope="module")
def default_model():
    from attnviz.inputs.tokens import load_text_model

    return load_text_model()


@pytest.fixture(scope="module")
def bert(default_model):
    from attnviz.inputs.tokens import attend_text

    return attend_text(TEXT, default_model)


@pytest.fixture(scope="module")
def bert_long(default_model):
    from attnviz.inputs.tokens import attend_text

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return attend_text(" ".join([TEXT] * 40), default_model)  # truncated to 512 tokens


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    from attnviz.inputs.tokens import attend_text, load_text_model

    return attend_text(TEXT, load_text_model(str(tiny_models("gpt2"))))


@pytest.fixture(scope="module")
def t5(tiny_models):
    from attnviz.inputs.tokens import attend_text, load_text_model

    return attend_text(TEXT, load_text_model(str(tiny_models("t5"))), target="Das Tier ging nicht")


def image_data(fig: Figure, gid: str) -> np.ma.MaskedArray:
    for ax in fig.axes:
        for im in ax.images:
            if im.get_gid() == gid:
                return np.ma.asarray(im.get_array())
    raise AssertionError(f"no image {gid!r}")


def all_text(fig: Figure) -> str:
    parts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [t.get_text() for t in ax.texts]
    return "\n".join(parts)


def colorbar_label(fig: Figure) -> str:
    (cax,) = [a for a in fig.axes if a.get_gid() == "colorbar"]
    return cax.get_ylabel()


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ---------------------------------------------------------------------------
# titles


@pytest.mark.parametrize("spec", [PIECES, WORDS, HIDE, WORDS_HIDE])
def test_titles_name_model_layer_head_and_settings(bert, spec):
    figs = {
        "layer 3, head 1": head_view(bert, 3, 1, spec),
        "layer 5, head mean": matrix_view(bert, 5, None, spec),
        "all layers and heads": model_view(bert, spec),
    }
    figs["'it'"] = focus_view(bert, analyse_focus(bert, "it", None, spec), spec)
    for what, fig in figs.items():
        text = " ".join(common.figure_text(fig).split())  # titles wrap to the figure's width
        assert bert.model_id in text
        assert what in text
        assert spec.describe() in text
        if spec.hide_special:
            assert "special tokens hidden, rows renormalised" in text
            assert "renormalised" in text


def test_titles_say_causal_and_kind(gpt2, t5):
    assert "causal mask" in common.figure_text(matrix_view(gpt2, 0, 0, PIECES))
    assert "cross-attention" in common.figure_text(matrix_view(t5, 0, 0, PIECES, kind="cross"))
    assert "decoder self-attention" in common.figure_text(head_view(t5, 0, 0, PIECES, kind="decoder"))


def test_figures_render_headless(bert):
    fig = head_view(bert, 3, 1, PIECES, focus=find_focus(bert.tokens, "it", None, PIECES))
    assert png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    buf = io.BytesIO()
    fig.savefig(buf, format="svg")
    assert b"<svg" in buf.getvalue()[:500]


# ---------------------------------------------------------------------------
# matrix view


def test_matrix_view_image_is_the_head_map(bert):
    fig = matrix_view(bert, 3, 1, PIECES)
    data = image_data(fig, "attention")
    expected = bert.main.full[3, 1].numpy()
    assert data.shape == expected.shape == (16, 16)
    np.testing.assert_allclose(data.filled(np.nan), expected, atol=1e-6)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(bert.tokens.tokens)
    it, animal = bert.tokens.tokens.index("it"), bert.tokens.tokens.index("animal")
    assert data[it, animal] == pytest.approx(0.68, abs=0.02)
    assert data[it].argmax() == animal


def test_matrix_view_head_mean_and_negative_layer(bert):
    data = image_data(matrix_view(bert, -1, None, PIECES), "attention")
    np.testing.assert_allclose(data, bert.main.full[5].mean(dim=0).numpy(), atol=1e-6)


def test_matrix_view_words_hidden_special_rows_sum_to_one(bert):
    fig = matrix_view(bert, 2, 4, WORDS_HIDE)
    data = image_data(fig, "attention")
    vm = prepare(bert.main.full[2, 4], bert.tokens, bert.tokens, WORDS_HIDE)
    np.testing.assert_allclose(data, vm.attn.numpy(), atol=1e-6)
    np.testing.assert_allclose(data.sum(axis=1), 1.0, atol=1e-5)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "[CLS]" not in labels and "[SEP]" not in labels
    assert colorbar_label(fig) == "attention probability (renormalised)"


def test_matrix_view_causal_cells_are_masked(gpt2):
    fig = matrix_view(gpt2, 1, 2, PIECES)
    data = image_data(fig, "attention")
    n = len(gpt2.tokens)
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    np.testing.assert_array_equal(np.ma.getmaskarray(data), upper)
    np.testing.assert_allclose(data.data[~upper], gpt2.main.full[1, 2].numpy()[~upper], atol=1e-6)
    # the hatched "not allowed" background is drawn under the image
    assert any(p.get_gid() == "masked" and p.get_hatch() for p in fig.axes[0].patches)


def test_matrix_view_causal_words(gpt2):
    data = image_data(matrix_view(gpt2, 0, 0, WORDS), "attention")
    units = units_for(gpt2.tokens, WORDS)
    assert data.shape == (len(units), len(units))
    np.testing.assert_array_equal(np.ma.getmaskarray(data), np.triu(np.ones_like(data.data, dtype=bool), k=1))


def test_matrix_view_cross_attention_axes(t5):
    data = image_data(matrix_view(t5, 1, 0, PIECES, kind="cross"), "attention")
    assert data.shape == (len(t5.target_tokens), len(t5.tokens))
    np.testing.assert_allclose(data, t5.attention["cross"].full[1, 0].numpy(), atol=1e-6)
    assert not np.ma.getmaskarray(data).any()  # cross-attention is not causal


def test_matrix_view_long_input_is_bounded_and_unlabelled(bert_long):
    n = len(bert_long.tokens)
    assert n == 512
    fig = matrix_view(bert_long, 0, 0, PIECES)
    w, h = fig.get_size_inches()
    assert w <= 20 and h <= 20
    ax = fig.axes[0]
    assert len(ax.get_xticks()) <= 30 and len(ax.get_yticks()) <= 60
    assert image_data(fig, "attention").shape == (n, n)
    assert colorbar_label(fig) == "attention probability (square-root scale)"


# ---------------------------------------------------------------------------
# focus view


def test_focus_view_cells_are_link_weights(bert):
    focus = analyse_focus(bert, "it", None, PIECES)
    fig = focus_view(bert, focus, PIECES)
    data = image_data(fig, "focus")
    units = units_for(bert.tokens, PIECES)
    fu = units.unit_of(focus.token_indices[0])
    rows, ku = prepare_rows(bert.main.full[:, :, list(focus.token_indices), :], list(focus.token_indices), bert.tokens, PIECES)
    # eligible: not special, earlier, not itself, not the neighbour
    exclude = [i for i, s in enumerate(ku.special) if s or i >= fu - 1]
    weights, targets = strongest_targets(rows, exclude)
    assert data.shape == (6, 12)
    np.testing.assert_allclose(data, weights.numpy(), atol=1e-6)
    animal = units.labels.index("animal")
    for layer, head in ((3, 1), (5, 11)):
        assert int(targets[layer, head]) == animal
        assert data[layer, head] == pytest.approx(0.68, abs=0.02)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "animal\n.68" in texts or "animal\n.67" in texts
    assert "'it'" in common.figure_text(fig)


def test_focus_view_words_hidden(bert):
    focus = analyse_focus(bert, "animal", None, WORDS_HIDE, direction="both", adjacent=True)
    data = image_data(focus_view(bert, focus, WORDS_HIDE), "focus")
    positions = list(focus.token_indices)
    rows, ku = prepare_rows(bert.main.full[:, :, positions, :], positions, bert.tokens, WORDS_HIDE)
    own = [i for i, g in enumerate(ku.groups) if positions[0] in g]
    weights, _ = strongest_targets(rows, own)
    np.testing.assert_allclose(data, weights.numpy(), atol=1e-6)


def test_focus_view_from_captured_rows_only(bert):
    """A "focus" capture plan keeps only the focus rows: the view must give the same numbers."""
    positions = find_focus(bert.tokens, "it", None, PIECES)
    full = bert.main.full
    rows_only = replace(bert.main, full=None, rows=full[:, :, list(positions), :].clone(), row_index=tuple(positions))
    partial = replace(bert, attention={"self": rows_only})
    np.testing.assert_allclose(
        image_data(focus_view(partial, analyse_focus(partial, "it", None, PIECES), PIECES), "focus"),
        image_data(focus_view(bert, analyse_focus(bert, "it", None, PIECES), PIECES), "focus"),
    )


def test_focus_view_causal_looks_back(gpt2):
    focus = analyse_focus(gpt2, "it", None, WORDS)
    data = image_data(focus_view(gpt2, focus, WORDS), "focus")
    units = units_for(gpt2.tokens, WORDS)
    fu = focus.unit
    rows, ku = prepare_rows(gpt2.main.full[:, :, list(units.groups[fu]), :], list(units.groups[fu]), gpt2.tokens, WORDS)
    exclude = [i for i in range(len(ku)) if ku.special[i] or i >= fu - 1]
    weights, targets = strongest_targets(rows, exclude)
    np.testing.assert_allclose(data, weights.numpy(), atol=1e-6)
    assert int(focus.targets.max()) < fu - 1


def test_focus_first_token_links_to_later_tokens(gpt2):
    """The first token has no earlier one: its links go to later tokens, and the focus says so (issue 15)."""
    focus = analyse_focus(gpt2, gpt2.tokens.tokens[0], 0, PIECES)
    assert focus.fallback and "later" in focus.fallback and focus.direction == "forward" and "causal" in focus.fallback
    assert all(link.target > 1 for link in focus.top)


def test_focus_hidden_special_token_is_an_error(bert):
    with pytest.raises(UsageError, match="hide-special hides"):
        analyse_focus(bert, "[CLS]", None, HIDE)
    with pytest.raises(UsageError):
        head_view(bert, 0, 0, HIDE, focus=(0,))


# ---------------------------------------------------------------------------
# head view


def test_head_view_focus_strongest_link_has_highest_alpha(bert):
    focus = find_focus(bert.tokens, "it", None, PIECES)
    fig = head_view(bert, 3, 1, PIECES, focus=focus)
    ax = fig.axes[0]
    coll = next(c for c in ax.collections if c.get_gid() == "focus-links")
    alphas = coll.get_colors()[:, 3]
    segs = coll.get_segments()
    strongest = segs[int(np.argmax(alphas))]
    # the strongest link ends at the key label "animal"
    key_texts = {t.get_gid(): t for t in ax.texts if (t.get_gid() or "").startswith("k")}
    animal = bert.tokens.tokens.index("animal")
    assert strongest[1][1] == pytest.approx(key_texts[f"k{animal}"].get_position()[1])
    assert "animal" in key_texts[f"k{animal}"].get_text() and ".68" in key_texts[f"k{animal}"].get_text()
    # every focus link starts at the focus row; widths grow with weight
    it = bert.tokens.tokens.index("it")
    assert {round(s[0][1], 6) for s in segs} == {round(float(np.linspace(0, 15, 16)[it]), 6)}
    widths = coll.get_linewidths()
    assert int(np.argmax(widths)) == int(np.argmax(alphas))
    # the other links are faded below the focus link
    others = next(c for c in ax.collections if c.get_gid() == "links")
    assert others.get_colors()[:, 3].max() < alphas.max()


def test_head_view_links_follow_weights(bert):
    fig = head_view(bert, 0, 2, PIECES)
    coll = next(c for c in fig.axes[0].collections if c.get_gid() == "links")
    w = bert.main.full[0, 2].numpy()
    assert len(coll.get_segments()) == int((w >= 0.005).sum())
    np.testing.assert_allclose(np.sort(coll.get_colors()[:, 3]), np.sort(w[w >= 0.005]), atol=1e-6)


def test_head_view_causal_draws_no_future_links(gpt2):
    fig = head_view(gpt2, 0, None, PIECES, top_k=5)
    ax = fig.axes[0]
    coll = next(c for c in ax.collections if c.get_gid() == "links")
    segments = coll.get_segments()
    assert len(segments) >= gpt2.main.num_queries  # every query draws at least its own link: the loop below checks something
    for (x0, yq), (x1, yk) in segments:
        assert yk <= yq + 1e-9


def test_head_view_long_input_is_bounded(bert_long):
    n = len(bert_long.tokens)
    focus = (300,)
    fig = head_view(bert_long, 3, 1, PIECES, focus=focus)
    w, h = fig.get_size_inches()
    assert w <= 8.5 and h <= 20
    ax = fig.axes[0]
    coll = next(c for c in ax.collections if c.get_gid() == "links")
    assert len(coll.get_segments()) <= 3 * n  # top-3 per query
    labels = [t for t in ax.texts if (t.get_gid() or "")[:1] in ("q", "k")]
    assert len(labels) < 260  # thinned, not 2 x 512
    assert any(t.get_gid() == "q300" for t in labels)  # the focus is always labelled
    assert "strongest 3 links per query" in common.figure_text(fig)
    assert len(png_bytes(fig)) < 5_000_000


def test_head_view_very_long_synthetic_input_is_bounded():
    """~4000 tokens: drawn with top-k links and thinned labels, in bounded size and time."""
    from attnviz.types import AttentionMaps, TextAttention, TokenInfo

    n = 4000
    g = torch.Generator().manual_seed(0)
    attn = torch.softmax(torch.randn(1, 1, n, n, generator=g) * 3, dim=-1)
    info = TokenInfo("x" * n, tuple(f"t{i}" for i in range(n)), tuple(range(n)), tuple((i, i + 1) for i in range(n)), (False,) * n)
    maps = AttentionMaps("self", 1, 1, n, n, full=attn)
    result = TextAttention("synthetic/model", "synthetic", "test", info, {"self": maps})
    fig = head_view(result, 0, 0, PIECES, focus=(2000,))
    assert fig.get_size_inches()[1] <= 20
    labels = [t for t in fig.axes[0].texts if (t.get_gid() or "")[:1] in ("q", "k")]
    assert len(labels) < 260
    fig = matrix_view(result, 0, 0, PIECES)
    assert max(fig.get_size_inches()) <= 20
    assert "shrunk for display" in common.figure_text(fig)


def test_head_view_top_k_and_errors(bert):
    coll = next(c for c in head_view(bert, 1, 1, PIECES, top_k=1).axes[0].collections if c.get_gid() == "links")
    assert len(coll.get_segments()) == 16
    with pytest.raises(UsageError, match="top-k"):
        head_view(bert, 1, 1, PIECES, top_k=0)
    with pytest.raises(UsageError, match="--layer 6"):
        head_view(bert, 6, 0, PIECES)
    with pytest.raises(UsageError, match="--head 12"):
        matrix_view(bert, 0, 12, PIECES)
    with pytest.raises(UsageError, match="cross"):
        model_view(bert, PIECES, kind="cross")


# ---------------------------------------------------------------------------
# model view


def test_model_view_cells_share_one_scale(bert):
    fig = model_view(bert, HIDE)
    ax = fig.axes[0]
    assert len(ax.images) == 6 * 12
    norms = {(im.norm.vmin, im.norm.vmax) for im in ax.images}
    assert norms == {(0.0, 1.0)}
    assert sum(1 for a in fig.axes if a.get_gid() == "colorbar") == 1
    vm = prepare(bert.main.full[4], bert.tokens, bert.tokens, HIDE)
    np.testing.assert_allclose(image_data(fig, "L4 H7"), vm.attn[7].numpy(), atol=1e-6)
    texts = [t.get_text() for t in ax.texts]
    assert "L0 H0" in texts and "L5 H11" in texts


def test_model_view_missing_layers_and_gqa_note(bert):
    full = bert.main.full
    partial = replace(bert.main, full=None, layers={0: full[0], 2: full[2]}, kv_heads=tuple(h // 3 for h in range(12)))
    result = replace(bert, attention={"self": partial})
    fig = model_view(result, PIECES)
    ax = fig.axes[0]
    assert len(ax.images) == 2 * 12
    np.testing.assert_allclose(image_data(fig, "L2 H5"), full[2, 5].numpy(), atol=1e-6)
    assert sum(1 for p in ax.patches if (p.get_gid() or "").endswith("missing")) == 4 * 12
    text = common.figure_text(fig)
    assert "layers 1, 3, 4, 5 not captured" in text
    assert "heads 0-2 share KV head 0" in text
    assert any(t.get_text() == "KV head 3" for t in ax.texts)


def test_model_view_causal_cells_masked(gpt2):
    fig = model_view(gpt2, PIECES)
    n = len(gpt2.tokens)
    data = image_data(fig, "L2 H3")
    np.testing.assert_array_equal(np.ma.getmaskarray(data), np.triu(np.ones((n, n), dtype=bool), k=1))


def test_model_view_long_input_shrinks_cells(bert_long):
    fig = model_view(bert_long, PIECES)
    assert max(fig.get_size_inches()) <= common.MAX_SIDE_IN
    data = image_data(fig, "L0 H0")
    assert max(data.shape) < 512
    # each pixel is the largest weight of its block
    assert float(data.max()) == pytest.approx(float(bert_long.main.full[0, 0].max()), abs=1e-6)
    assert "shrunk for display" in common.figure_text(fig)


def test_maps_for_sides(t5, bert):
    maps, q, k = maps_for(t5, "cross")
    assert q is t5.target_tokens and k is t5.tokens
    maps, q, k = maps_for(t5, "decoder")
    assert q is k is t5.target_tokens and maps.causal
    maps, q, k = maps_for(t5, "self")  # "self" on an encoder-decoder is the encoder
    assert maps is t5.attention["encoder"] and q is k is t5.tokens
    with pytest.raises(UsageError, match="encoder"):
        maps_for(bert, "encoder")


# ---------------------------------------------------------------------------
# shared helpers


def test_safe_label():
    assert common.safe_label("$x$") == r"\$x\$"
    assert common.safe_label("a" * 30, 10) == "a" * 9 + "…"
    assert common.safe_label("") == "∅"
    assert common.safe_label("a\nb") == "a⏎b"
    assert common.safe_label("  ") == "␣␣"


def test_short_weight():
    assert common.short_weight(0.684) == ".68"
    assert common.short_weight(0.999) == "1.0"
    assert common.short_weight(0.001) == "<.01"
    assert common.short_weight(0.0) == ".00"


def test_block_reduce():
    v = np.arange(16, dtype=np.float32).reshape(4, 4)
    out, m, f = common.block_reduce(v, None, 2, how="max")
    assert f == 2 and m is None
    np.testing.assert_array_equal(out, [[5, 7], [13, 15]])
    out, _, _ = common.block_reduce(v, None, 2, how="mean")
    np.testing.assert_allclose(out, [[2.5, 4.5], [10.5, 12.5]])
    mask = np.triu(np.ones((4, 4), dtype=bool), k=1)
    out, m, _ = common.block_reduce(v, mask, 2, how="max")
    np.testing.assert_array_equal(m, [[False, True], [False, False]])
    assert out[0, 0] == 5  # cell (0,1) = 1 is masked, max of 0, 4, 5
    same, _, f = common.block_reduce(v, None, 4)
    assert f == 1 and same is v


def test_kv_heads_note():
    assert common.kv_heads_note(None) == ""
    note = common.kv_heads_note((0, 0, 1, 1))
    assert "heads 0-1 share KV head 0" in note and "heads 2-3 share KV head 1" in note
    assert "..." in common.kv_heads_note(tuple(h // 4 for h in range(32)))


def test_spread_positions_and_causal_mask(bert):
    assert common.spread_positions([0, 0.1, 0.2], 1.0, 0, 10) == [0, 1.0, 2.0]
    assert common.spread_positions([9.9, 10], 1.0, 0, 10) == [9.0, 10]
    units = units_for(bert.tokens, WORDS)
    m = causal_mask(units, units)
    assert m.shape == (len(units), len(units)) and not m.diagonal().any() and m[0, 1] and not m[1, 0]


def test_model_view_dense_grid_stays_bounded():
    """48 layers x 64 heads: layer/head numbers move to the margins, the figure stays within bounds."""
    from attnviz.types import AttentionMaps, TextAttention, TokenInfo

    n, L, H = 6, 48, 64
    attn = torch.softmax(torch.randn(L, H, n, n, generator=torch.Generator().manual_seed(1)), dim=-1)
    info = TokenInfo("a b c d e f", tuple("abcdef"), tuple(range(n)), tuple((2 * i, 2 * i + 1) for i in range(n)), (False,) * n)
    result = TextAttention("synthetic/big", "synthetic", "test", info, {"self": AttentionMaps("self", L, H, n, n, full=attn)})
    fig = model_view(result, PIECES)
    assert max(fig.get_size_inches()) <= common.MAX_SIDE_IN
    ax = fig.axes[0]
    assert len(ax.images) == L * H
    texts = {t.get_text() for t in ax.texts}
    assert {"L0", "L47", "H0", "H63"} <= texts
    np.testing.assert_allclose(image_data(fig, "L47 H63"), attn[47, 63].numpy(), atol=1e-6)


def test_focus_view_cross_attention(t5):
    focus = analyse_focus(t5, "Tier", None, WORDS)
    assert focus.kind == "cross"
    data = image_data(focus_view(t5, focus, WORDS), "focus")
    maps = t5.attention["cross"]
    positions = list(focus.token_indices)
    rows, ku = prepare_rows(maps.full[:, :, positions, :], positions, t5.tokens, WORDS)
    weights, _ = strongest_targets(rows, [i for i, s in enumerate(ku.special) if s])  # the source holds no "itself"
    assert data.shape == (maps.num_layers, maps.num_heads)
    np.testing.assert_allclose(data, weights.numpy(), atol=1e-6)
