"""attnviz generate, issue 21: random LM heads labelled everywhere, encoders refused, the positions limit served
(not refused), checks before the model loads, other modalities named."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from attnviz.cli import app
from tiny import TEXT, TOKENIZERS, text_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["generate", *[str(a) for a in args]])


@pytest.fixture(scope="module")
def short_gpt2(tmp_path_factory):
    """A tiny GPT-2 with 24 positions and its LM head."""
    import torch
    import transformers as tf

    tok = TOKENIZERS["gpt2"]()
    config = text_config("gpt2", len(tok))
    config.n_positions = 24
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("short") / "gpt2-24"
    tf.GPT2LMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def headless_llama(tmp_path_factory):
    """A tiny Llama saved without its (untied) language-model head."""
    import torch
    import transformers as tf

    tok = TOKENIZERS["llama"]()
    config = text_config("llama", len(tok))
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("headless") / "llama-base"
    tf.LlamaModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_random_lm_head_is_labelled_in_json_terminal_and_figures(headless_llama, tmp_path):
    res = invoke("The cat sat", "-m", headless_llama, "-n", 3, "--random-weights-ok", "--json", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["random_weights"] and "language-model head" in doc["random_weights"]
    assert "noise" in res.stderr
    res = invoke("The cat sat", "-m", headless_llama, "-n", 3, "--random-weights-ok", "-o", tmp_path / "h",
                 "--format", "svg")
    assert res.exit_code == 0, res.output
    assert "RANDOM WEIGHTS" in res.stdout
    svg = (tmp_path / "h" / "generation-map.svg").read_text(encoding="utf-8")
    assert "RANDOM WEIGHTS" in svg


def test_headless_checkpoint_refused_without_the_flag(headless_llama, tmp_path):
    res = invoke("The cat sat", "-m", headless_llama, "-n", 3, "-o", tmp_path / "o")
    assert res.exit_code == 3 and "language-model head" in res.stderr
    assert not (tmp_path / "o").exists()


def test_encoder_is_refused_for_generate(tiny_models, tmp_path):
    res = invoke("The cat sat", "-m", tiny_models("bert"), "-n", 3, "--random-weights-ok", "-o", tmp_path / "o")
    assert res.exit_code == 3, res.output
    assert "encoder" in res.stderr and "attnviz text" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_vision_model_names_the_image_command(tmp_path):
    from vision_tiny import make_vision_model

    path = make_vision_model(tmp_path, "vit")
    res = invoke("The cat sat", "-m", path, "-n", 3, "-o", tmp_path / "o")
    assert res.exit_code == 3, res.output
    assert "attnviz image" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_too_many_new_tokens_generate_up_to_the_positions(short_gpt2, tmp_path):
    res = invoke("The cat sat", "-m", short_gpt2, "-n", 1_000_000, "--json", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["prompt_length"] + len(doc["generated"]["ids"]) <= 24
    assert "generating at most" in doc["notice"] and "generating at most" in res.stderr


def test_prompt_longer_than_the_positions_is_cut_with_a_warning(short_gpt2, tmp_path):
    res = invoke(" ".join([TEXT] * 6), "-m", short_gpt2, "-n", 4, "--json", "-o", tmp_path / "o")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["prompt_length"] == 23 and len(doc["generated"]["ids"]) == 1
    assert "kept its first 23" in doc["notice"]


@pytest.mark.parametrize("args, needle", [
    (("-n", 0), "--max-new-tokens"),
    (("--sample", "--temperature", 0), "--temperature"),
    (("--sample", "--top-p", 2), "--top-p"),
])
def test_bad_settings_are_refused_before_the_model_is_read(tmp_path, args, needle):
    res = invoke("The cat sat", "-m", tmp_path / "no-such-model", *args)
    assert res.exit_code == 2, res.output  # a usage error, not "model not found" (3): checked first
    assert needle in res.stderr
