"""attnviz generate: CLI JSON, figures, saved tensors, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from attnviz.cli import app
from test_generate import _eager
from tiny import TEXT

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["generate", *[str(a) for a in args]])


def test_json_figures_and_saved_tensors(lm_models, tmp_path):
    path = lm_models("llama")
    out, st = tmp_path / "out", tmp_path / "attn.safetensors"
    res = invoke(TEXT, "-m", path, "-n", 6, "--step", 2, "--json", "-o", out, "--save-attn", st)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    gen = doc["generated"]
    T, P = len(gen["ids"]), doc["prompt_length"]
    assert T == 6 and len(gen["tokens"]) == T and len(gen["probabilities"]) == T
    assert doc["prompt"]["tokens"][0] == "<s>" and len(doc["prompt"]["ids"]) == P
    assert doc["backend"] == "sdpa+attnviz" and doc["sampling"]["do_sample"] is False
    assert "first token" in doc["rule"]["top"]
    with safe_open(str(st), "pt") as fh:
        attn = fh.get_tensor("attentions")
        meta = fh.metadata()
    assert attn.dtype == torch.float32 and attn.shape == (3, 4, T, P + T)
    assert json.loads(meta["input_ids"]) == doc["prompt"]["ids"] + gen["ids"]
    assert json.loads(meta["prompt_length"]) == P and meta["model"] == str(path)
    assert json.loads(meta["tokens"]) == doc["prompt"]["tokens"] + gen["tokens"]
    for i in range(T):
        assert float(attn[:, :, i, P + i + 1 :].abs().sum()) == 0.0  # later tokens: 0
    # the saved rows are the eager rows of one forward over prompt + generated tokens
    from types import SimpleNamespace

    ref, _ = _eager(path, SimpleNamespace(encoder_decoder=False, prompt_ids=doc["prompt"]["ids"], generated_ids=gen["ids"]))
    assert (attn - ref[:, :, P : P + T]).abs().max() <= 1e-5
    # each step's top link: an earlier, non-special token other than the first, with the weight stored in the file
    for i, step in enumerate(doc["steps"]):
        assert step["token"] == gen["tokens"][i] and step["id"] == gen["ids"][i]
        assert 1 <= len(step["top"]) <= 3
        weights = [t["weight"] for t in step["top"]]
        assert weights == sorted(weights, reverse=True)
        for t in step["top"]:
            assert 0 < t["target"] < P + i and t["target_token"] == (doc["prompt"]["tokens"] + gen["tokens"])[t["target"]]
            assert abs(float(attn[t["layer"], t["head"], i, t["target"]]) - t["weight"]) < 1e-5
        # the strongest link is the maximum over all layers and heads of the eligible keys
        eligible = attn[:, :, i, 1 : P + i]
        assert abs(float(eligible.max()) - step["top"][0]["weight"]) < 1e-5
    assert doc["focus"]["step"] == 2 and doc["focus"]["token"] == gen["tokens"][2] and doc["focus"]["top"]
    names = sorted(p.split("/")[-1] for p in doc["files"])
    assert names == ["focus-view.png", "generation-map.png", "head-view.png", "sink-share.png"]
    for name in names:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 300


def test_encoder_decoder_cross_attention_and_head_mean(lm_models, tmp_path):
    path = lm_models("t5")
    st = tmp_path / "t5.safetensors"
    res = invoke(TEXT, "-m", path, "-n", 4, "--layer", 1, "--json", "-o", tmp_path / "o", "--save-attn", st)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    T, P = len(doc["generated"]["ids"]), doc["prompt_length"]
    assert doc["encoder_decoder"] and doc["context_tokens"] == ["<pad>"]
    with safe_open(str(st), "pt") as fh:
        attn, cross = fh.get_tensor("attentions"), fh.get_tensor("cross_attentions")
    assert attn.shape == (2, 4, T, 1 + T) and cross.shape == (2, 4, T, P)
    for i, step in enumerate(doc["steps"]):
        for t in step["top_source"]:
            assert t["layer"] == 1 and t["head"] == "mean"
            assert abs(float(cross[1, :, i, t["target"]].mean()) - t["weight"]) < 1e-5
    assert any(p.endswith("cross-map.png") for p in doc["files"])


def test_sampling_is_reproducible(lm_models, tmp_path):
    path = lm_models("llama")
    runs = [json.loads(invoke(TEXT, "-m", path, "-n", 5, "--sample", "--seed", s, "--temperature", 2.0, "--json", "-o", tmp_path / "s").stdout)
            for s in (7, 7, 8)]
    assert runs[0]["generated"]["ids"] == runs[1]["generated"]["ids"] != runs[2]["generated"]["ids"]
    assert runs[0]["sampling"] == {"do_sample": True, "temperature": 2.0, "top_p": 1.0, "seed": 7}


def test_human_output(lm_models, tmp_path):
    res = invoke(TEXT, "-m", lm_models("llama"), "-n", 3, "-o", tmp_path / "h")
    assert res.exit_code == 0, res.output
    text = " ".join(res.stdout.split())  # rich wraps long lines
    assert "generated:" in text and "excluding the first token (attention sink)" in text
    assert "generation-map.png" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0.5"], "need --sample"),
    (["--layer", "9"], "--layer 9 is out of range"),
    (["--token", "zzzz"], "was not generated"),
    (["--step", "40"], "out of range"),
    (["--format", "gif"], "--format"),
])
def test_bad_input_is_one_line(lm_models, tmp_path, args, message):
    res = invoke(TEXT, "-m", lm_models("llama"), "-n", 3, "-o", tmp_path / "b", *args)
    assert res.exit_code != 0
    lines = [l for l in res.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("attnviz: error:") and message in lines[0], res.stderr


def test_long_prompt_finishes_with_bounded_figures(tmp_path):
    """A 2,000-token prompt and 64 new tokens on a tiny Llama-style model (the issue's integration check)."""
    from transformers import AutoModelForCausalLM

    from tiny import CORPUS, TOKENIZERS, text_config

    tok = TOKENIZERS["llama"]()
    config = text_config("llama", len(tok))
    config.max_position_embeddings = 4096
    torch.manual_seed(0)
    path = tmp_path / "llama-long"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    words = " ".join(CORPUS * 60).split()
    prompt = " ".join(words[:1640])
    n = len(tok(prompt)["input_ids"])
    assert 1900 <= n <= 2100
    res = invoke(prompt, "-m", path, "-n", 64, "--step", 63, "--json", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["generated"]["ids"]) == 64 or doc["stopped_at_eos"]
    for f in doc["files"]:
        with Image.open(f) as im:
            assert max(im.size) <= 19.5 * 150, (f, im.size)  # the head view is up to ~19 inches high, as in attnviz text


def test_several_formats_and_html(lm_models, tmp_path):
    """--format png,svg writes each view in both formats; --format html alone writes only the report page."""
    from typer.testing import CliRunner

    from attnviz.cli import app

    model = lm_models("gpt2")
    ok = CliRunner().invoke(app, ["generate", "The cat", "--model", str(model), "-n", "2", "--out", str(tmp_path / "o"), "--format", "png,svg"])
    assert ok.exit_code == 0, ok.output
    names = sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith("."))
    assert names == ["generation-map.png", "generation-map.svg", "sink-share.png", "sink-share.svg"]
    page = CliRunner().invoke(app, ["generate", "The cat", "--model", str(model), "-n", "2", "--out", str(tmp_path / "p"), "--format", "html"])
    assert page.exit_code == 0, page.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir() if not p.name.startswith(".")) == ["report.html"]
