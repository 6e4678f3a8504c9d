"""``attnviz.load_attention``: every command's ``--save-attn`` file read back as dense ``[L, H, Q, K]``."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from attnviz.cli import app
from cli_checks import load_saved
from vision_tiny import make_photo, make_vision_model

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

runner = CliRunner()
SENTENCE = "The animal didn't cross the street because it was too tired."


def test_load_attention_reads_every_commands_file(lm_models, tmp_path, one_thread):
    import attnviz
    from attnviz.errors import InputError, UsageError
    from tiny import make_lm_model

    import shutil

    text_folders = {"lm": make_lm_model(tmp_path, "gpt2"), "t5": make_lm_model(tmp_path, "t5")}
    shutil.copytree(text_folders["lm"], tmp_path / "123")  # a model folder whose name reads as a number
    text_folders["lm"] = tmp_path / "123"
    vit_folder = (make_vision_model(tmp_path, "vit"), make_photo(tmp_path / "photo.png"))

    # text, single stack: the file's own tensor, a slice of layers
    path = tmp_path / "t.safetensors"
    r = runner.invoke(app, ["text", SENTENCE, "-m", str(text_folders["lm"]), "-o", str(tmp_path / "t"), "--save-attn", str(path)])
    assert r.exit_code == 0, r.output
    f = attnviz.load_attention(path)
    saved, _ = load_saved(path)
    assert f.kinds == ("self",) and f.layout() == "dense" and f.metadata["tokens"][0]
    assert isinstance(f.metadata["model"], str) and f.metadata["model"].endswith("123")  # a string stays a string
    assert torch.equal(f.dense(layers=0), saved["attentions"][:1].float())
    assert torch.equal(f.dense(), saved["attentions"].float())
    assert torch.equal(f.dense(layers=[-1]), saved["attentions"][-1:].float())
    assert torch.equal(f.dense(layers=slice(0, 1)), saved["attentions"][:1].float())
    with pytest.raises(UsageError, match="out of range"):
        f.dense(layers=[9])
    with pytest.raises(UsageError, match="no cross attention"):
        f.dense("cross")
    # encoder-decoder: kinds must be named
    path = tmp_path / "t5.safetensors"
    r = runner.invoke(app, ["text", "hello world", "--target", "hallo welt", "-m", str(text_folders["t5"]), "-o",
                            str(tmp_path / "t5"), "--save-attn", str(path)])
    assert r.exit_code == 0, r.output
    f = attnviz.load_attention(path)
    assert f.kinds == ("encoder", "decoder", "cross")
    with pytest.raises(UsageError, match="pass kind="):
        f.dense()
    assert torch.equal(f.dense("cross"), load_saved(path)[0]["cross_attentions"].float())
    # generation: the generated rows at their query positions, zeros elsewhere
    path = tmp_path / "g.safetensors"
    r = runner.invoke(app, ["generate", "The capital of France is", "-m", str(lm_models("llama")), "-n", "3", "-o",
                            str(tmp_path / "g"), "--save-attn", str(path)])
    assert r.exit_code == 0, r.output
    f = attnviz.load_attention(path)
    rows = load_saved(path)[0]["attentions"]
    start = f.metadata["context_length"]
    d = f.dense()
    assert f.layout() == "rows" and d.shape[-1] == d.shape[-2] == rows.shape[-1]
    assert torch.equal(d[:, :, start:], rows) and float(d[:, :, :start].abs().sum()) == 0
    # image: other tensors (rollout, method maps) are listed, not attention kinds
    folder, photo = vit_folder
    path = tmp_path / "i.safetensors"
    r = runner.invoke(app, ["image", str(photo), "-m", str(folder), "-o", str(tmp_path / "i"), "--save-attn", str(path),
                            "--method", "all"])
    assert r.exit_code == 0, r.output
    f = attnviz.load_attention(path)
    assert f.kinds == ("self",) and "rollout" in f.names and {"method/relevance", "method/rollout"} <= set(f.names)
    # an encoder-decoder generation: decoder rows and cross rows, each at its query position
    path = tmp_path / "g5.safetensors"
    r = runner.invoke(app, ["generate", "hello world", "-m", str(text_folders["t5"]), "-n", "3", "-o", str(tmp_path / "g5"),
                            "--save-attn", str(path)])
    assert r.exit_code == 0, r.output
    f = attnviz.load_attention(path)
    saved = load_saved(path)[0]
    start = f.metadata["context_length"]
    assert f.kinds == ("decoder", "cross") and f.layout("cross") == "rows"
    cross = f.dense("cross")
    assert cross.shape[-2] == start + saved["cross_attentions"].shape[-2] and cross.shape[-1] == saved["cross_attentions"].shape[-1]
    assert torch.equal(cross[:, :, start:], saved["cross_attentions"]) and torch.equal(f.dense()[:, :, start:], saved["attentions"])
    # not a file of ours
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a safetensors file"):
        attnviz.load_attention(tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        attnviz.load_attention(tmp_path / "missing.safetensors")
