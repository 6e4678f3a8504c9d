"""Longformer and LED (sliding window + global tokens): the capture places every probability the model computes at its
(query, key) and nothing else; tested against an independent dense recomputation from the modules' own projections."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from attnviz.cli import app

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)


def _longformer(window: int = 4, layers: int = 2):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LongformerConfig(vocab_size=60, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                              intermediate_size=20, attention_window=window, max_position_embeddings=80, pad_token_id=1,
                              initializer_range=0.5)
    return tf.LongformerModel(cfg).eval()


def _led():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LEDConfig(vocab_size=60, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=20, decoder_ffn_dim=20, attention_window=4,
                       max_encoder_position_embeddings=64, max_decoder_position_embeddings=64, pad_token_id=1, init_std=0.5)
    return tf.LEDModel(cfg).eval()


def recompute(model, inputs, n: int, globals_: list[int]) -> torch.Tensor:
    """``[L, H, n, n]`` from each layer's own query/key (local rows) and query_global/key_global (global rows) on the
    hidden states that layer received: softmax over the window (|i - j| <= w, not a global key) plus the global keys,
    or, for a global query, over every key; padding never attended."""
    seen = []  # Longformer's and LED's sliding-window modules: query/key/value and their *_global twins
    hooks = [m.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append((mod, (args[0] if args else kwargs["hidden_states"]).detach())),
        with_kwargs=True) for m in model.modules() if hasattr(m, "query_global") and hasattr(m, "one_sided_attn_window_size")]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    out = []
    torch.set_grad_enabled(False)
    for mod, hidden in seen:
        h = hidden[0]  # [N_padded, D]
        heads, d = mod.num_heads, mod.head_dim
        w = mod.one_sided_attn_window_size

        def split(x):
            return x.view(x.shape[0], heads, d).transpose(0, 1)  # [H, N, d]

        q, k = split(mod.query(h) / math.sqrt(d)), split(mod.key(h))
        qg, kg = split(mod.query_global(h) / math.sqrt(d)), split(mod.key_global(h))
        maps = torch.zeros(heads, n, n)
        for i in range(n):
            if i in globals_:
                scores = torch.einsum("hd,hkd->hk", qg[:, i], kg[:, :n])  # [H, n]
                maps[:, i] = torch.softmax(scores, -1)
                continue
            keys = [j for j in range(n) if (abs(i - j) <= w and j not in globals_) or j in globals_]
            scores = torch.einsum("hd,hkd->hk", q[:, i], k[:, keys])
            maps[:, i, keys] = torch.softmax(scores, -1)
        out.append(maps)
    torch.set_grad_enabled(True)
    return torch.stack(out)


def _saved_longformer(folder, tok):
    """A tiny Longformer (window 4, 2 layers) with ``tok`` saved into ``folder``; returns the model."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.LongformerModel(tf.LongformerConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=20, attention_window=4,
                                                   max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                                                   initializer_range=0.5)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


@pytest.mark.parametrize("n,globals_", [(11, [0, 5, 9]), (13, [0]), (8, [])])
def test_longformer_capture_equals_a_dense_recomputation(n, globals_, one_thread):
    from attnviz.capture import FULL, capture

    model = _longformer()
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(5, 60, (1, n), generator=gen)
    mask = torch.zeros_like(ids)
    mask[0, globals_] = 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "global_attention_mask": mask}
    cap = capture(model, inputs, FULL)
    full = cap.attention["self"].full  # [L, H, n, n]
    assert full.shape == (2, 2, n, n)  # odd lengths: Longformer pads to a multiple of the window; padding never shows
    reference = recompute(model, inputs, n, globals_)
    assert float((full - reference).abs().max()) <= 1e-5
    assert torch.allclose(full.sum(-1), torch.ones(2, 2, n), atol=1e-5)  # rows sum to 1 over the keys attended
    w = 2
    for i in range(n):  # nothing outside the layout
        for j in range(n):
            if i not in globals_ and j not in globals_ and abs(i - j) > w:
                assert float(full[:, :, i, j].abs().max()) == 0.0


def test_led_encoder_capture_equals_a_dense_recomputation(one_thread):
    from attnviz.capture import FULL, capture

    model = _led()
    n = 10
    ids = torch.randint(5, 60, (1, n), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(ids)
    mask[0, [0, 6]] = 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "global_attention_mask": mask,
              "decoder_input_ids": torch.tensor([[2, 7, 8]])}
    cap = capture(model, inputs, FULL)
    enc = cap.attention["encoder"].full
    reference = recompute(model.get_encoder(), {k: inputs[k] for k in ("input_ids", "attention_mask", "global_attention_mask")},
                          n, [0, 6])
    assert enc.shape == (2, 2, n, n) and float((enc - reference).abs().max()) <= 1e-5
    assert cap.attention["decoder"].full.shape[-1] == 3 and cap.attention["cross"].full.shape[-1] == n


def test_attnviz_text_on_a_longformer_makes_the_first_token_global(tmp_path, one_thread):
    from tiny import bpe_tokenizer

    _saved_longformer(tmp_path / "lf", bpe_tokenizer())
    r = CliRunner().invoke(app, ["text", "The animal didn't cross the street because it was too tired.", "-m",
                                 str(tmp_path / "lf"), "--token", "it", "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["backend"] == "eager" and doc["focus"]["top"]
    assert doc["global_tokens"] == [{"index": 0, "token": doc["tokens"][0]}]
    assert "global tokens 0" in r.stderr and "the first token" in r.stderr


def test_global_option_sets_the_global_tokens_and_the_run_says_which(tmp_path, one_thread):
    from attnviz.capture import FULL, capture
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer()
    model = _saved_longformer(tmp_path / "lf", tok)
    text = "The animal didn't cross the street because it was too tired."
    r = CliRunner().invoke(app, ["text", text, "-m", str(tmp_path / "lf"), "--global", "0,it", "-o", str(tmp_path / "o"),
                                 "--json", "--save-attn", str(tmp_path / "a.safetensors")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    it = [t.lstrip("Ġ") for t in doc["tokens"]].index("it")
    assert [g["index"] for g in doc["global_tokens"]] == [0, it]
    assert "global tokens 0" in r.stderr
    # the saved maps equal a recomputation with those global tokens
    from attnviz import load_attention

    ids = tok(text, return_tensors="pt")["input_ids"]
    mask = torch.zeros_like(ids)
    mask[0, [0, it]] = 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "global_attention_mask": mask}
    saved = load_attention(tmp_path / "a.safetensors").dense()
    assert float((saved - recompute(model, inputs, ids.shape[1], [0, it])).abs().max()) <= 1e-5
    assert torch.equal(saved, capture(model, inputs, FULL).attention["self"].full)
    bad = CliRunner().invoke(app, ["text", text, "-m", str(tmp_path / "lf"), "--global", "99", "-o", str(tmp_path / "p")])
    assert bad.exit_code == 2 and "out of range" in bad.stderr


def test_a_long_document_beyond_the_dense_budget_is_refused_in_one_line(monkeypatch, tmp_path, one_thread):
    import attnviz.sparse as sparse
    from tiny import bpe_tokenizer

    _saved_longformer(tmp_path / "lf", bpe_tokenizer())
    monkeypatch.setattr(sparse, "DENSE_BAND_BYTES", 2 * 2 * 10 * 10 * 4)  # room for 10 tokens
    r = CliRunner().invoke(app, ["text", "The animal didn't cross the street because it was too tired.", "-m",
                                 str(tmp_path / "lf"), "-o", str(tmp_path / "o")])
    errors = [line for line in r.stderr.splitlines() if line.startswith("attnviz: error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "--max-length 10" in errors[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("n,globals_,window", [(11, [0, 5, 9], 4), (13, [0], 4), (8, [], 4), (17, [3, 16], [4, 8])])
def test_sparse_band_capture_equals_a_dense_recomputation(n, globals_, window, one_thread):
    """The long-document capture: band [L, H, N, 2W+1] + global keys/rows, never [N, N]; equals the recomputation,
    rows sum to 1, nothing stored for keys outside the layout or past the input (window padding), outputs unchanged."""
    from attnviz.sparse import capture_sliding_window

    model = _longformer(window=window)
    gen = torch.Generator().manual_seed(n)
    ids = torch.randint(5, 60, (1, n), generator=gen)
    mask = torch.zeros_like(ids)
    mask[0, globals_] = 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "global_attention_mask": mask}
    got = capture_sliding_window(model, inputs, rows=[1, -1])
    band = got.band
    W = max(window) // 2 if isinstance(window, list) else window // 2
    assert band.local.shape == (2, 2, n, 2 * W + 1) and band.global_index == tuple(globals_)
    reference = recompute(model, inputs, n, globals_)
    assert float((band.dense() - reference).abs().max()) <= 1e-5
    assert torch.allclose(band.row_sums(), torch.ones(2, 2, n), atol=1e-5)
    # the band itself: columns past the sequence (padding) and before it are exactly 0
    for q in range(n):
        for o in range(2 * W + 1):
            if not 0 <= q + o - W < n:
                assert float(band.local[:, :, q, o].abs().max()) == 0.0
    if isinstance(window, list):  # layer 0 has window 4 (w = 2) inside a band of W = 4: its outer columns stay 0
        assert float(band.local[0, :, :, [0, 1, 7, 8]].abs().max()) == 0.0
        assert float(band.local[1, :, :, [0, 8]].abs().max()) > 0.0
    assert got.row_index == (1, n - 1)
    assert float((got.rows - reference[:, :, [1, n - 1]]).abs().max()) <= 1e-5
    with torch.inference_mode():
        plain = model(**inputs).last_hidden_state
    assert torch.equal(plain, got.outputs.last_hidden_state)
    only_rows = capture_sliding_window(model, inputs, rows=[4], keep_band=False)
    assert only_rows.band is None and float((only_rows.rows[:, :, 0] - reference[:, :, 4]).abs().max()) <= 1e-5


def test_sparse_band_capture_of_led_encoder(one_thread):
    from attnviz.sparse import capture_sliding_window

    model = _led()
    n = 10
    ids = torch.randint(5, 60, (1, n), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(ids)
    mask[0, [0, 6]] = 1
    enc_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "global_attention_mask": mask}
    got = capture_sliding_window(model, {**enc_inputs, "decoder_input_ids": torch.tensor([[2, 7, 8]])})
    assert got.kind == "encoder" and got.band.kind == "encoder"
    reference = recompute(model.get_encoder(), enc_inputs, n, [0, 6])
    assert float((got.band.dense() - reference).abs().max()) <= 1e-5


def test_band_file_round_trips_through_load_attention(tmp_path, one_thread):
    """--save-attn's band layout: save_tensors + load_attention(...).dense(layers) give back the dense maps."""
    import attnviz
    from attnviz.report import save_tensors
    from attnviz.sparse import capture_sliding_window

    model = _longformer(window=[4, 8])
    n = 15
    ids = torch.randint(5, 60, (1, n), generator=torch.Generator().manual_seed(3))
    mask = torch.zeros_like(ids)
    mask[0, [0, 7]] = 1
    band = capture_sliding_window(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                          "global_attention_mask": mask}).band
    path = save_tensors(tmp_path / "a.safetensors", band.to_tensors(), {**band.metadata(), "tokens": ["x"] * n})
    f = attnviz.load_attention(path)
    assert f.kinds == ("self",) and f.layout() == "band" and f.shapes["self"] == (2, 2, n, n)
    assert f.metadata["global_index"] == [0, 7] and f.metadata["window"] == [2, 4]
    dense = band.dense()
    assert torch.equal(f.dense(), dense)
    assert torch.equal(f.dense(layers=[1]), dense[1:])
    assert set(f.names) == {"band/local", "band/global_keys", "band/global_rows"}
    back = f.sparse()  # the stored layout itself
    assert torch.equal(back.local, band.local) and back.global_index == (0, 7) and back.window == (2, 4)
    import attnviz.attention_file as af
    from attnviz.errors import UsageError

    af.DENSE_LIMIT, limit = 4 * 2 * n * n, af.DENSE_LIMIT  # room for one dense layer
    try:
        assert f.dense(layers=[0]).shape == (1, 2, n, n)
        with pytest.raises(UsageError, match=r"with \.sparse\(\)"):
            f.dense()
    finally:
        af.DENSE_LIMIT = limit
