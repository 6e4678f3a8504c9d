"""Issue 15, silently wrong: a band layout (Longformer, LED) is never drawn, saved or called exact as a
[query, key] map; `attnviz check` refuses it in one line (exit 3)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from attnviz.cli import app

SENTENCE = ("The trophy doesn't fit into the brown suitcase because it is too large, said the man who "
            "had packed it for the long journey across the sea.")


def _tokenizer():
    from tiny import TOKENIZERS

    return TOKENIZERS["bert"]()


@pytest.fixture(scope="module")
def band_models(tmp_path_factory):
    import transformers as tf

    tok = _tokenizer()
    root = tmp_path_factory.mktemp("band")
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=32, num_attention_heads=4, intermediate_size=37)
    longformer = tf.LongformerModel(tf.LongformerConfig(
        **common, num_hidden_layers=2, attention_window=[8, 8], max_position_embeddings=130, pad_token_id=0))
    led = tf.LEDModel(tf.LEDConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, attention_window=[8, 8],
        max_encoder_position_embeddings=128, max_decoder_position_embeddings=64, pad_token_id=0))
    paths = {}
    for name, model in (("longformer", longformer), ("led", led)):
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    return paths


def _inputs(model, tok, text=SENTENCE):
    enc = tok(text, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if model.config.is_encoder_decoder:
        inputs["decoder_input_ids"] = enc["input_ids"][:, :5]
    return inputs


@pytest.mark.parametrize("name", ["longformer", "led"])
def test_capture_places_a_band_layout_in_dense_maps(band_models, name):
    """Longformer / LED return a band (window 8 here); the capture places it at (query, key): rows sum to 1, nothing
    beyond the window (no global token in these inputs). tests/test_sparse.py compares every value with a
    recomputation."""
    from transformers import AutoModel

    from attnviz.capture import CapturePlan, capture

    model = AutoModel.from_pretrained(band_models[name]).eval()
    inputs = _inputs(model, _tokenizer())
    n = inputs["input_ids"].shape[-1]
    assert n > 17  # longer than the band (window + 1)
    kind = "encoder" if name == "led" else "self"
    full = capture(model, inputs, CapturePlan(full=True)).attention[kind].full
    assert full.shape[-2:] == (n, n)
    assert torch.allclose(full.sum(-1), torch.ones(full.shape[:-1]), atol=1e-5)
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert float(full[..., (i - j).abs() > 4].abs().max()) == 0.0


@pytest.mark.parametrize("name", ["longformer", "led"])
def test_check_runs_on_a_band_layout(band_models, name):
    res = CliRunner().invoke(app, ["check", str(band_models[name])])
    assert res.exit_code == 0, res.output
    assert "exact" in res.stdout


def test_square_eager_maps_pass_the_layout_check(tiny_models):
    from transformers import AutoModel

    from attnviz.capture import CapturePlan, capture

    path = tiny_models("bert")
    model = AutoModel.from_pretrained(path).eval()
    inputs = _inputs(model, _tokenizer(), "The cat sat.")
    got = capture(model, inputs, CapturePlan(full=True), backend="eager")
    n = inputs["input_ids"].shape[-1]
    assert got.attention["self"].full.shape[-2:] == (n, n)
