"""Long documents (Longformer / LED beyond LONG_DOCUMENT_TOKENS, or --window-at): the sparse capture's views, JSON and
band file hold exactly the probabilities of an independent recomputation (tests/test_sparse.py's ``recompute``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnviz.cli import app

pytestmark = pytest.mark.slow

TEXT = " ".join(["The animal did not cross the street because it was too tired."] * 8)


def _model(folder, window: int = 8):
    import transformers as tf
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    model = tf.LongformerModel(tf.LongformerConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20,
        attention_window=window, max_position_embeddings=300, pad_token_id=tok.pad_token_id, initializer_range=0.5)).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def _json(result) -> dict:
    return json.loads(result.stdout[result.stdout.index("{"):])


def test_long_document_views_json_and_band_file_equal_a_recomputation(tmp_path, monkeypatch, one_thread):
    import attnviz
    import attnviz.pipelines.longdoc as longdoc
    from test_sparse import recompute

    model, tok = _model(tmp_path / "lf")
    monkeypatch.setattr(longdoc, "LONG_DOCUMENT_TOKENS", 64)  # the text (151 tokens) is a long document here
    r = CliRunner().invoke(app, ["text", TEXT, "-m", str(tmp_path / "lf"), "--token", "it", "--token-index", "3",
                                 "--global", "0,street", "--window-at", "30", "-o", str(tmp_path / "o"), "--json",
                                 "--save-attn", str(tmp_path / "a.safetensors")])
    assert r.exit_code == 0, r.output
    doc = _json(r)
    n = doc["num_tokens"]
    streets = [i for i, t in enumerate(doc["tokens"]) if t.lstrip("Ġ") == "street"]
    assert len(streets) == 8 and [g["index"] for g in doc["global_tokens"]] == [0] + streets  # every occurrence
    assert doc["layout"] == "band" and doc["window"] == [4, 4] and doc["kind"] == "self"
    assert doc["checks"]["probe_max_abs_diff"] <= 1e-5 and doc["checks"]["row_sum_max_error"] <= 1e-5
    for stem in ("band", "profile", "global", "window-30"):
        data = (tmp_path / "o" / f"{stem}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    mask = torch.zeros_like(ids)
    mask[0, [0] + streets] = 1
    reference = recompute(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "global_attention_mask": mask},
                          n, [0] + streets)  # [L, H, n, n]
    focus = doc["focus"]["token_indices"]
    assert len(focus) == 1 and doc["tokens"][focus[0]].lstrip("Ġ") == "it"
    for layer in doc["focus"]["layers"]:  # the strongest keys of the head-mean row, in order, with their weights
        row = reference[layer["layer"], :, focus[0]].mean(0)
        row[focus[0]] = -1
        expected = torch.argsort(row, descending=True, stable=True)[:5].tolist()
        assert [t["index"] for t in layer["top"]] == expected
        assert np.allclose([t["weight"] for t in layer["top"]], row[expected].numpy(), atol=1e-6)
        assert layer["on_global"] == pytest.approx(float(reference[layer["layer"], :, focus[0], [0] + streets].mean(0).sum()), abs=1e-6)
    last = doc["global_rows"][1]  # global token 'street' (first occurrence): its row in the last layer
    row = reference[-1, :, last["index"]].mean(0)
    row[last["index"]] = -1
    assert [t["index"] for t in last["top"][-1]] == torch.argsort(row, descending=True, stable=True)[:5].tolist()
    f = attnviz.load_attention(tmp_path / "a.safetensors")
    assert f.layout() == "band" and f.metadata["tokens"] == doc["tokens"] and f.metadata["global_index"] == [0] + streets
    assert float((f.dense() - reference).abs().max()) <= 1e-5
    assert float((f.dense(layers=[-1]) - reference[-1:]).abs().max()) <= 1e-5


def test_long_document_route_needs_no_dense_budget_and_says_what_it_shows(tmp_path, monkeypatch, one_thread):
    """Past LONG_DOCUMENT_TOKENS the dense maps are never built: a dense budget of 10 tokens does not matter; without
    --token there is no profile; the human summary names the checks."""
    import attnviz.pipelines.longdoc as longdoc
    import attnviz.sparse as sparse

    _model(tmp_path / "lf")
    monkeypatch.setattr(longdoc, "LONG_DOCUMENT_TOKENS", 64)
    monkeypatch.setattr(sparse, "DENSE_BAND_BYTES", 2 * 2 * 10 * 10 * 4)
    r = CliRunner().invoke(app, ["text", TEXT, "-m", str(tmp_path / "lf"), "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")) == ["band.png", "global.png"]
    assert "equal eager output_attentions" in r.stdout and "sliding window ±4" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--method", "relevance"], "--method needs dense attention maps"),
    (["--window-at", "900"], "--window-at 900 is out of range"),
    (["--layer", "5"], "--layer 5 is out of range"),
])
def test_long_document_bad_options_get_one_line(tmp_path, args, message, one_thread):
    _model(tmp_path / "lf")
    r = CliRunner().invoke(app, ["text", TEXT, "-m", str(tmp_path / "lf"), "--window-at", "3", "-o", str(tmp_path / "o")] + args)
    errors = [line for line in r.stderr.splitlines() if line.startswith("attnviz: error:")]
    assert r.exit_code == 2 and len(errors) == 1 and message in errors[0], r.output
    assert not (tmp_path / "o").exists()


def test_band_over_the_memory_budget_is_refused_before_loading(tmp_path, monkeypatch, one_thread):
    import attnviz.pipelines.longdoc as longdoc

    _model(tmp_path / "lf")
    monkeypatch.setattr(longdoc, "BAND_BUDGET", 4 * 2 * 2 * 100 * (9 + 2))  # 100 tokens of band, 1 global token
    r = CliRunner().invoke(app, ["text", TEXT, "-m", str(tmp_path / "lf"), "--window-at", "3", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "use --max-length 100 or less" in r.stderr, r.output


def test_window_at_on_a_dense_model_is_refused(tmp_path, one_thread):
    from tiny import make_text_model

    folder = make_text_model(tmp_path, "bert")
    r = CliRunner().invoke(app, ["text", "a b c", "-m", str(folder), "--window-at", "1", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--window-at is for long documents" in r.stderr, r.output


def test_long_document_analyses_account_for_every_probability(one_thread):
    """window_matrix's rows + 'elsewhere' sum to 1; band_overview is the band's diagonals; focus_profile rows sum to 1."""
    from attnviz.analysis.longdoc import band_overview, focus_profile, global_strip, window_matrix
    from attnviz.html.longdoc import top_keys
    from attnviz.sparse import capture_sliding_window
    from test_sparse import _longformer, recompute

    model = _longformer(window=4)
    n = 23
    ids = torch.randint(5, 60, (1, n), generator=torch.Generator().manual_seed(5))
    mask = torch.zeros_like(ids)
    mask[0, [0, 12]] = 1
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "global_attention_mask": mask}
    cap = capture_sliding_window(model, inputs, rows=[7])
    band = cap.band
    dense = recompute(model, inputs, n, [0, 12])  # [L, H, n, n], from the layers' own projections
    for layer in range(2):  # the HTML page's strongest keys, searched in the band's own layout
        idx, w = top_keys(band, layer, k=6)
        for q in (0, 5, 12, 22):
            row = dense[layer, :, q].mean(0)
            assert np.allclose(w[q], torch.topk(row, 6).values.numpy(), atol=1e-6)
            pos = w[q] > 0  # a zero weight's index means nothing (the page skips it)
            assert np.allclose(row[idx[q][pos].astype(np.int64)].numpy(), w[q][pos], atol=1e-6)
    matrix, start, outside = window_matrix(band, 1, 10, 4)
    assert start == 6 and matrix.shape == (9, 9)
    assert np.allclose(matrix.sum(1) + outside, 1.0, atol=1e-5)
    assert np.allclose(matrix, dense[1, :, 6:15, 6:15].mean(0).numpy(), atol=1e-6)
    over = band_overview(band, 0, head=1)  # [2W+1, n]
    assert np.isnan(over[:, 0]).all() and np.isnan(over[:, 12]).all()  # global queries: their rows are elsewhere
    assert np.isnan(over[:2, 1]).all() and not np.isnan(over[2:, 1]).any()  # no keys before the start; key 0 global
    assert np.isnan(over[2 + 1, 11]) and not np.isnan(over[2, 11])  # query 11: key 12 is global (its strip)
    for q in (3, 9, 20):
        for o in range(5):
            k = q + o - 2
            if 0 <= k < n and k not in (0, 12) and q not in (0, 12):
                assert over[o, q] == pytest.approx(float(dense[0, 1, q, k]), abs=1e-6)
    strip = global_strip(band, 0)
    assert np.allclose(strip[1], dense[0, :, :, 12].mean(0).numpy() * np.array([q not in (0, 12) for q in range(n)]), atol=1e-6)
    assert np.allclose(focus_profile(cap.rows, n).sum(-1), 1.0, atol=1e-5)


def _longt5(folder, kind: str):
    import transformers as tf
    from tiny import t5_tokenizer

    tok = t5_tokenizer()
    torch.manual_seed(0)
    cfg = tf.LongT5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=1,
                          num_heads=2, local_radius=3, global_block_size=4, encoder_attention_type=kind,
                          decoder_start_token_id=0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                          initializer_factor=8.0)
    model = tf.LongT5ForConditionalGeneration(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


@pytest.mark.parametrize("kind", ["transient-global", "local"])
def test_longt5_is_shown_through_its_encoder_band(tmp_path, kind, one_thread):
    """LongT5 (local / transient-global): attnviz text takes the long-document route at any length; the JSON's focus
    keys, the transient-global share and the band file equal tests/test_longt5.py's independent recomputation."""
    import attnviz
    from test_longt5 import reference

    model, tok = _longt5(tmp_path / "lt5", kind)
    text = "The animal did not cross the street because it was too tired, said the old man."
    r = CliRunner().invoke(app, ["text", text, "-m", str(tmp_path / "lt5"), "--token", "wa", "--window-at", "4",
                                 "-o", str(tmp_path / "o"), "--json", "--save-attn", str(tmp_path / "a.safetensors")])
    assert r.exit_code == 0, r.output
    doc = _json(r)
    assert doc["kind"] == "encoder" and doc["window"] == [3, 3] and doc["global_tokens"] == []
    assert doc["checks"]["probe_max_abs_diff"] <= 1e-5
    ids = tok(text, return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    assert doc["num_tokens"] == n
    dense, S = reference(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                 "decoder_input_ids": torch.tensor([[0]])})  # [L, H, n, n + S]
    assert len(doc["side_keys"]) == S and (S > 0) == (kind == "transient-global")
    q = doc["focus"]["token_indices"][0]
    for layer in doc["focus"]["layers"]:
        row = dense[layer["layer"], :, q].mean(0)
        assert layer["on_side_keys"] == pytest.approx(float(row[n:].sum()), abs=1e-6)
        tokens_row = row[:n].clone()
        tokens_row[q] = -1
        expected = [i for i in torch.argsort(tokens_row, descending=True, stable=True)[:5].tolist() if tokens_row[i] > 0]
        assert [t["index"] for t in layer["top"]] == expected  # keys of weight 0 (outside the window) never listed
    f = attnviz.load_attention(tmp_path / "a.safetensors")
    assert f.kinds == ("encoder",) and f.layout("encoder") == "band" and f.shapes["encoder"] == (2, 2, n, n + S)
    assert float((f.dense("encoder") - dense).abs().max()) <= 1e-5
    assert {p.name for p in (tmp_path / "o").glob("*.png")} == {"band.png", "profile.png", "window-4.png"}
    human = CliRunner().invoke(app, ["text", text, "-m", str(tmp_path / "lt5"), "--token", "wa", "-o", str(tmp_path / "h")])
    assert human.exit_code == 0 and ("on global blocks" in human.stdout) == (kind == "transient-global"), human.output


def test_check_covers_band_models(tmp_path, one_thread):
    """attnviz check: a '(band)' row per built-in text for Longformer and LongT5 (the long-document capture against
    the model's own eager output_attentions), exact; LongT5 has no dense rows (its encoder has no dense map)."""
    _model(tmp_path / "lf")
    _longt5(tmp_path / "lt5", "transient-global")
    for folder, kinds in (("lf", {"self"}), ("lt5", {"encoder"})):
        r = CliRunner().invoke(app, ["check", str(tmp_path / folder), "--json"])
        assert r.exit_code == 0, r.output
        doc = _json(r)
        band = [c for c in doc["checks"] if c["input"].endswith("(band)")]
        assert len(band) == 2 and {c["kind"] for c in band} == kinds and doc["exact"]
        assert all(c["max_abs_diff"] == 0.0 for c in band)
        if folder == "lt5":
            assert len(doc["checks"]) == 2 and band[1]["keys"] > band[1]["queries"]  # + the transient-global keys


def _bigbird(folder):
    import transformers as tf
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    cfg = tf.BigBirdConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=512, block_size=4, num_random_blocks=1,
                           attention_type="block_sparse", pad_token_id=tok.pad_token_id, initializer_range=0.2)
    model = tf.BigBirdModel(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def test_bigbird_block_sparse_long_document_and_short_input(tmp_path, one_thread):
    """BigBird (block-sparse): from 29 tokens (block 4, 1 random block) the block layout (tests/test_blocksparse.py
    proves it against an independent recomputation) is captured, drawn, checked and saved; the JSON's focus keys and
    the saved file equal that capture's dense rows; a shorter input runs full attention, as transformers does, and
    says so."""
    import attnviz
    from attnviz.blocksparse import capture_block_sparse

    model, tok = _bigbird(tmp_path / "bb")
    r = CliRunner().invoke(app, ["text", TEXT, "-m", str(tmp_path / "bb"), "--token", "it", "--token-index", "3",
                                 "--window-at", "30", "-o", str(tmp_path / "o"), "--json",
                                 "--save-attn", str(tmp_path / "a.safetensors")])
    assert r.exit_code == 0, r.output
    doc = _json(r)
    assert doc["layout"] == "blocks" and doc["block_size"] == 4 and doc["num_random_blocks"] == 1
    assert doc["checks"]["probe_max_abs_diff"] <= 1e-5 and doc["checks"]["row_sum_max_error"] <= 1e-5
    assert {p.name for p in (tmp_path / "o").glob("*.png")} == {"blocks.png", "profile.png", "global.png", "window-30.png"}
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    (blocks,) = capture_block_sparse(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0].values()
    dense = blocks.dense()
    q = doc["focus"]["token_indices"][0]
    for layer in doc["focus"]["layers"]:
        row = dense[layer["layer"], :, q].mean(0)
        row[q] = -1
        expected = [i for i in torch.argsort(row, descending=True, stable=True)[:5].tolist() if row[i] > 0]
        assert [t["index"] for t in layer["top"]] == expected
        assert layer["window"] == [(q // 4 - 1) * 4, (q // 4 + 2) * 4 - 1]
    assert [g["positions"] for g in doc["global_rows"]] == [[0, 1, 2, 3], list(range(148, doc["num_tokens"]))]
    f = attnviz.load_attention(tmp_path / "a.safetensors")
    assert f.layout() == "blocks" and torch.equal(f.dense(), dense) and torch.equal(f.dense(layers=[1]), dense[1:])
    short = CliRunner().invoke(app, ["text", "The animal did not cross the street.", "-m", str(tmp_path / "bb"),
                                     "-o", str(tmp_path / "s"), "--json"])
    assert short.exit_code == 0, short.output
    assert "fewer than block-sparse attention needs (29); the model runs full attention" in short.stderr
    assert _json(short)["attention_kinds"]["self"]["keys"] == _json(short)["num_tokens"]


def test_check_covers_bigbird_block_sparse(tmp_path, one_thread):
    """attnviz check on BigBird: one '(blocks)' row on the passage repeated past block-sparse's minimum length
    (against the model's own dense map where it holds the probability), then the built-in texts at full attention."""
    _bigbird(tmp_path / "bb")
    r = CliRunner().invoke(app, ["check", str(tmp_path / "bb"), "--json"])
    assert r.exit_code == 0, r.output
    doc = _json(r)
    blocks = [c for c in doc["checks"] if c["input"].endswith("(blocks)")]
    assert len(blocks) == 1 and blocks[0]["queries"] >= 29 and blocks[0]["max_abs_diff"] <= 1e-5
    assert doc["exact"] and [c["input"] for c in doc["checks"][1:]] == ["sentence", "passage"]


def test_long_document_views_at_column_width_in_every_format(tmp_path, one_thread):
    """--size column (3.35 in) with svg, pdf and png: every long-document view fits (no text outside the figure, no
    overlapping labels in the window view, which then shows fewer tokens and says how many in the JSON)."""
    from attnviz.analysis.longdoc import LongDocument
    from attnviz.render.layout import Style, overlapping_texts, texts_outside
    from attnviz.render.longdoc import band_view, global_view, profile_view, window_view
    from attnviz.sparse import capture_sliding_window

    model, tok = _model(tmp_path / "lf")
    r = CliRunner().invoke(app, ["text", TEXT, "-m", str(tmp_path / "lf"), "--token", "it", "--token-index", "3",
                                 "--window-at", "30", "--size", "column", "--format", "svg,pdf,png",
                                 "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    doc = _json(r)
    assert doc["window_view"]["radius"] < 24
    assert {p.suffix for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")} == {".svg", ".pdf", ".png"}
    ids = tok(TEXT, return_tensors="pt")["input_ids"]
    mask = torch.zeros_like(ids)
    mask[0, 0] = 1
    cap = capture_sliding_window(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                         "global_attention_mask": mask}, rows=[70])
    d = LongDocument("lf", "longformer", "self", tuple(doc["tokens"]), 2, 2, cap.window, cap.global_index, cap.band,
                     cap.rows, (70,), "it")
    style = Style.from_options(size="column")
    for fig in (band_view(d, style=style), profile_view(d, style=style), global_view(d, style=style),
                window_view(d, 30, 1, 24, style=style)):
        assert texts_outside(fig) == []
    assert overlapping_texts(window_view(d, 30, 1, 24, style=style)) == []
