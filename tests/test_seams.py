"""Issue 15: the text pipeline in the library, the modality table, the method registry, and the fixes found
when attnviz was tried as a new user would (each of these failed before)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnviz.cli import app

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def one_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("attnviz: error:"), lines[0]
    return lines[0]


def config_folder(root: Path, name: str, config) -> Path:
    """A model folder holding only config.json (the modality refusals need nothing else)."""
    folder = root / name
    config.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------
# the pipeline is a library call that returns what --json prints


def test_text_pipeline_returns_what_json_prints(tmp_path):
    from attnviz.pipelines.common import OutputRequest
    from attnviz.pipelines.text import TextRequest, run

    text = "The animal didn't cross the street because it was too tired."
    result = run(TextRequest(text, token="it", views="focus", output=OutputRequest(out=tmp_path / "lib")))
    assert result.focus.top[0].target_label == "animal"
    assert [p.name for p in result.files] == ["focus-view.png"]
    cli = invoke("text", text, "--token", "it", "--views", "focus", "--out", tmp_path / "cli", "--json")
    assert cli.exit_code == 0, cli.output
    lib_doc, cli_doc = result.to_json(), json.loads(cli.stdout)
    for key in ("tokens", "focus", "head_view", "num_layers", "attention_kinds", "verification"):
        assert lib_doc[key] == cli_doc[key], key
    assert Path(lib_doc["files"][0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# the first words of a sentence are inspectable


@pytest.mark.parametrize("text,token,words", [
    ("Cats sleep most of the day.", "Cats", False),
    ("This state-of-the-art model works well.", "state-of-the-art", True),
])
def test_first_word_falls_back_to_later_tokens(tmp_path, text, token, words):
    args = ["text", text, "--token", token, "--out", tmp_path, "--json", "--views", "focus"] + (["--words"] if words else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    focus = doc["focus"]
    assert focus["fallback"] and "later" in focus["fallback"], focus
    assert "later" in focus["rule"]
    units = focus["units"]
    assert focus["top"] and all(link["target_index"] > focus["index"] + 1 for link in focus["top"])  # later, not the neighbour
    assert all(units[link["target_index"]] == link["target"] for link in focus["top"])
    assert "links go to later tokens" in result.stderr  # the notice
    human = invoke(*[a for a in args if a != "--json"])
    assert human.exit_code == 0 and "links go to later tokens" in human.stdout


def test_the_focus_view_says_the_fallback():
    from attnviz import attend_text
    from attnviz.analysis.focus import analyse_focus
    from attnviz.analysis.select import ViewSpec
    from attnviz.render.common import figure_text
    from attnviz.render.text import focus_view

    result = attend_text("Cats sleep most of the day.")
    focus = analyse_focus(result, "cats", None, ViewSpec())
    assert focus.fallback and focus.direction == "forward"
    assert "links go to later tokens" in figure_text(focus_view(result, focus, ViewSpec())).replace("\n", " ")


def test_a_token_with_no_other_word_is_refused_in_one_line(tmp_path):
    line = one_line(invoke("text", "Hello", "--token", "hello", "--out", tmp_path), 2)
    assert "no other non-special token" in line


def test_the_direction_hint_is_not_repeated_when_given(tmp_path):
    result = invoke("text", "Cats sleep.", "--token", "cats", "--direction", "both", "--adjacent", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["focus"]["fallback"] is None


# ---------------------------------------------------------------------------
# a model of another modality gets one line naming the command that takes it


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    from transformers import (
        CanineConfig, FunnelConfig, LEDConfig, LongformerConfig, NystromformerConfig, PerceiverConfig, ViTConfig,
        Wav2Vec2Config, WhisperConfig,
    )

    root = tmp_path_factory.mktemp("configs")
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    return {
        "whisper": config_folder(root, "whisper", WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1,
                                                                encoder_attention_heads=2, decoder_attention_heads=2)),
        "wav2vec2": config_folder(root, "wav2vec2", Wav2Vec2Config(**small)),
        "perceiver": config_folder(root, "perceiver", PerceiverConfig(d_model=32, num_latents=4, d_latents=32)),
        "vit": config_folder(root, "vit", ViTConfig(**small, image_size=32, patch_size=8)),
        "longformer": config_folder(root, "longformer", LongformerConfig(**small, attention_window=4)),
        "led": config_folder(root, "led", LEDConfig(d_model=32, encoder_layers=1, decoder_layers=1, attention_window=4)),
        "funnel": config_folder(root, "funnel", FunnelConfig(d_model=32, n_head=2, block_sizes=[1, 1])),
        "canine": config_folder(root, "canine", CanineConfig(**small)),
        "nystromformer": config_folder(root, "nystromformer", NystromformerConfig(**small, num_landmarks=4,
                                                                                     segment_means_seq_len=16)),
    }


@pytest.mark.parametrize("kind,words", [
    ("whisper", ["speech model", "whisper", "use 'attnviz audio'"]),
    ("wav2vec2", ["speech model", "wav2vec2"]),
    ("perceiver", ["Perceiver", "no attnviz command"]),
    ("vit", ["vision model", "use 'attnviz image'"]),
])
def test_text_refuses_another_modality_in_one_line(configs, tmp_path, kind, words):
    line = one_line(invoke("text", "Hello world.", "--model", configs[kind], "--out", tmp_path), 3)
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("kind", ["funnel", "canine", "nystromformer"])
def test_sparse_or_pooled_text_models_are_refused_in_one_line(configs, tmp_path, kind):
    line = one_line(invoke("text", "The trophy doesn't fit into the suitcase.", "--model", configs[kind], "--out", tmp_path,
                           "--save-attn", tmp_path / "a.safetensors"), 3)
    assert kind in line and "cannot show it exactly" in line
    assert not (tmp_path / "a.safetensors").exists() and not list(tmp_path.glob("*.png"))


def test_modality_table_reads_config_json_without_transformers(configs):
    code = (
        "import sys; from attnviz.inputs import modality_of, config_document\n"
        f"print(modality_of(config_document({str(configs['whisper'])!r})).name, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    assert out == ["audio", "False"]


# ---------------------------------------------------------------------------
# early checks: milliseconds, no transformers


EARLY = """
import sys, time
t = time.perf_counter()
from attnviz.cli import main
sys.argv = ["attnviz"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    print(exc.code, "transformers" in sys.modules, round(time.perf_counter() - t, 3))
"""


@pytest.mark.parametrize("extra,message", [
    (["--token", "zebra"], "is not in the input"),
    (["--direction", "sideways"], "--direction"),
    (["--token-index", "1"], "--token-index"),
    (["--max-length", "100000"], "maximum of 512 positions"),
])
def test_text_mistakes_are_refused_before_transformers_is_imported(tmp_path, extra, message):
    proc = subprocess.run([sys.executable, "-c", EARLY, "text", "The cat sat on the mat.", *extra, "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    code, imported, seconds = proc.stdout.split()
    assert (code, imported) == ("2", "False"), proc.stdout + proc.stderr
    assert float(seconds) < 1.5
    assert message in proc.stderr


# ---------------------------------------------------------------------------
# long texts: only the beginning is tokenized


def test_a_long_text_is_tokenized_only_as_far_as_needed(tmp_path, monkeypatch):
    from attnviz.inputs import tokens
    from attnviz.inputs.tokens import load_text_model, tokenize

    tm = load_text_model(weights=False)
    text = "The animal didn't cross the street because it was too tired. " * 40_000  # 2.5 MB
    seen = []
    real = type(tm.tokenizer).__call__

    def spy(self, part, *args, **kwargs):
        seen.append(len(part))
        return real(self, part, *args, **kwargs)

    monkeypatch.setattr(type(tm.tokenizer), "__call__", spy)
    with pytest.warns(Warning, match="kept the first 64"):
        enc, info, dropped = tokenize(tm, text, max_length=64)
    assert max(seen) <= tokens.CHARS_PER_TOKEN * 64  # never the whole text
    assert dropped is None and len(info) == 64
    monkeypatch.setattr(type(tm.tokenizer), "__call__", real)
    reference = tm.tokenizer(text[:5000], truncation=True, max_length=64)["input_ids"]
    assert list(enc["input_ids"]) == list(reference)  # the same tokens as truncating the whole text


def test_a_short_long_text_still_counts_what_was_dropped(tmp_path):
    result = invoke("text", "word " * 600, "--out", tmp_path, "--json", "--views", "matrix")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["num_tokens"] == 512 and doc["dropped_tokens"] == 602 - 512


# ---------------------------------------------------------------------------
# the CLI's own promises


def test_a_closed_pipe_exits_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "attnviz", "text", "The cat sat on the mat.", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert code in (0, 141), (code, stderr)
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


def test_debug_keeps_the_exit_code(tmp_path):
    result = invoke("text", "", "--debug", "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert "attnviz: error: the text is empty" in result.stderr


def test_json_never_holds_nan():
    from attnviz.cli.common import print_json

    with pytest.raises(ValueError):
        print_json({"x": float("nan")})


# ---------------------------------------------------------------------------
# one token matcher, one method registry


def test_one_matcher_for_typographic_apostrophes():
    from attnviz.analysis.select import ViewSpec, find_focus, match_labels, occurrence, same_token
    from attnviz.inputs.tokens import load_text_model, prepare_text

    assert same_token("didn’t", "DIDN'T") and same_token("##ing", "ing") and not same_token("did", "didn't")
    tm = load_text_model(weights=False)
    info = prepare_text(tm, "I didn't go home. You didn’t go either.").tokens
    first = find_focus(info, "didn't", 0, ViewSpec(words=True))
    second = find_focus(info, "didn't", 1, ViewSpec(words=True))
    assert info.text[info.offsets[second[0]][0]:info.offsets[second[-1]][1]] == "didn’t"
    assert first[0] < second[0]
    labels = ["a", "didn’t", "b", "didn't"]
    assert match_labels(labels, "didn't", 1) == 3 and occurrence(labels, 3) == 1


def test_method_registry():
    import torch

    from attnviz import methods
    from attnviz.methods.rollout import attention_rollout
    from attnviz.errors import UsageError

    assert {"attention", "head-fusion", "rollout"} <= set(methods.names())
    for name in methods.names():
        m = methods.get(name)
        assert m.signals <= set(methods.SIGNALS) and m.source
    layers = [torch.softmax(torch.randn(3, 5, 5), -1) for _ in range(4)]
    r = methods.get("rollout")(layers, head_fusion="max")
    assert torch.allclose(r.values, attention_rollout(torch.stack(layers), "max"))
    a = methods.get("attention")(layers, layer=-1, head=2)
    assert a.layer == 3 and torch.equal(a.values, layers[3][2])
    with pytest.raises(UsageError, match="rollout"):
        methods.get("saliency")
    assert {"grad-attention", "relevance", "value-norm"} <= set(methods.names())


# ---------------------------------------------------------------------------
# token labels (issue 21, low)


def test_an_unknown_character_stays_in_its_word():
    from attnviz.analysis.words import word_units
    from attnviz.inputs.tokens import load_text_model, prepare_text

    info = prepare_text(load_text_model(weights=False), "Hello 世界 ok").tokens
    assert info.tokens[2:4] == ("世", "[UNK]") and info.special[3] is False
    units = word_units(info)
    assert "世界" in units.labels and units.groups[units.labels.index("世界")] == (2, 3)


def test_a_lone_space_marker_is_labelled_as_a_space():
    from tiny import t5_tokenizer

    from attnviz.inputs.tokens import token_info

    tok = t5_tokenizer()
    text = "a cat"
    enc = tok(text, return_offsets_mapping=True)
    raw = tok.convert_ids_to_tokens(enc["input_ids"])
    labels = token_info(text, enc, tok).tokens
    assert raw[0] == "▁" and labels[0] == "␣"  # not the next letter, "a"


def test_long_indexed_token_labels_leave_room_for_the_axis_label():
    """A thinned matrix axis writes "18 ##arian": the left margin counts the index too (the y label was cut off)."""
    from attnviz import attend_text
    from attnviz.analysis.select import ViewSpec
    from attnviz.render.layout import Style, overlapping_texts, texts_outside
    from attnviz.render.text import matrix_view

    result = attend_text("Supercalifragilisticexpialidocious antidisestablishmentarianism")
    fig = matrix_view(result, 5, None, ViewSpec(), style=Style.from_options("column"))
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    ax = fig.axes[0]
    renderer = canvas.get_renderer()
    assert ax.yaxis.label.get_window_extent(renderer).x0 >= 0
    ticks = [t.get_window_extent(renderer) for t in ax.get_yticklabels() if t.get_text()]
    assert ax.yaxis.label.get_window_extent(renderer).x1 <= min(t.x0 for t in ticks) + 1
    assert not texts_outside(fig) and not overlapping_texts(fig)


def test_a_very_long_label_is_shortened_in_titles():
    from attnviz.render.layout import LABEL_CHARS, Style

    label = Style.from_options("column", label="VeryLongModelName" * 200).model_label("x")
    assert len(label) == LABEL_CHARS and label.endswith("…")


def test_cjk_tokens_are_drawn_with_a_fallback_font():
    """Views draw a CJK token with an installed CJK font, not as an empty box (a 'Glyph ... missing' warning)."""
    import warnings

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from attnviz import attend_text
    from attnviz.analysis.select import ViewSpec
    from attnviz.render.layout import font_families
    from attnviz.render.text import matrix_view

    if len(font_families()) < 2:
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-wqy-microhei)")
    fig = matrix_view(attend_text("Hello 世界 ok"), 0, None, ViewSpec(words=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FigureCanvasAgg(fig).draw()
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_a_run_says_which_previous_outputs_it_removed(tmp_path):
    """Issue 21 #11: the README's rule (a new run removes the previous run's leftovers) is said in one line."""
    first = invoke("text", "The cat sat on the mat.", "--out", tmp_path, "--views", "head,matrix")
    assert first.exit_code == 0, first.output
    second = invoke("text", "The cat sat on the mat.", "--out", tmp_path, "--views", "matrix")
    assert second.exit_code == 0, second.output
    assert "removed 1 file of the previous 'text' run" in second.stderr and "head-view.png" in second.stderr
    assert not (tmp_path / "head-view.png").exists() and (tmp_path / "matrix.png").exists()


def test_an_empty_out_is_refused(tmp_path):
    result = invoke("text", "The cat sat.", "--out", "")
    assert result.exit_code == 2 and "--out is empty" in result.stderr
