"""attnviz image: CLI behaviour, JSON, saved tensors, views, bad input."""

from __future__ import annotations

import io
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnviz.cli import app
from cli_checks import load_saved
from vision_tiny import DEIT, DINOV2, ROOT, SAMPLES, needs_deit, needs_dinov2, eager_attentions, make_photo, make_vision_model, reference_rollout

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)


runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, ["image", *[str(a) for a in args]])


def run_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)




def one_error_line(result, code=None):
    assert result.exit_code != 0
    if code is not None:
        assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("attnviz: error:")
    assert result.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "tiny-vision"
    return lambda kind: make_vision_model(root, kind)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_photo(tmp_path_factory.mktemp("photo") / "p.png", (48, 40))


def test_help_lists_the_options_and_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from attnviz.cli import app\n"
        "r = CliRunner().invoke(app, ['image', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for opt in ('--model', '--layer', '--head', '--out', '--format', '--json', '--save-attn', '--head-fusion',\n"
        "            '--discard-ratio', '--patch', '--debug', '--allow-pickle', '--trust-remote-code'):\n"
        "    assert opt in r.output, opt\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_a_patch_off_the_photo_is_refused_before_transformers_loads(tmp_path):
    photo = make_photo(tmp_path / "p.png", (48, 40))
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from attnviz.cli import app\n"
        f"r = CliRunner().invoke(app, ['image', {str(photo)!r}, '--patch', '500,10', '--out', {str(tmp_path / 'o')!r}])\n"
        "assert r.exit_code == 2, r.output\n"
        "assert 'outside the photo: x in [0, 48), y in [0, 40)' in r.stderr, r.stderr\n"
        "assert 'transformers' not in sys.modules and 'torch' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))


# ---------------------------------------------------------------------------
# real DeiT-Tiny


@needs_deit
def test_deit_json_predictions_files_and_saved_tensors(tmp_path, one_thread):
    out = tmp_path / "out"
    saved = tmp_path / "attn.safetensors"
    doc = run_json(SAMPLES / "coffee.png", "--model", DEIT, "--out", out, "--save-attn", saved)
    assert doc["model"] == str(DEIT)
    assert doc["image"]["width"] == 600 and doc["image"]["height"] == 400
    assert doc["grid"] == [14, 14] and doc["prefix_tokens"] == 1
    assert doc["num_layers"] == 12 and doc["num_heads"] == 3
    top = doc["predictions"][0]
    assert top["label"] == "espresso" and abs(top["score"] - 0.88) < 0.01
    assert len(doc["predictions"]) == 5
    assert doc["sink_patches"] == []
    names = {Path(f).name for f in doc["files"]}
    assert names == {"report.png", "attention-layer11.png", "rollout.png", "predictions.png"}
    for f in doc["files"]:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.width > 500
    tensors, meta = load_saved(saved)
    assert tensors["attentions"].shape == (12, 3, 197, 197) and tensors["attentions"].dtype == torch.float32
    assert tensors["rollout"].shape == (14, 14) and tensors["rollout"].dtype == torch.float32
    assert meta["model"] == str(DEIT)
    assert json.loads(meta["grid"]) == [14, 14] and json.loads(meta["prefix_tokens"]) == 1
    ref, _ = eager_attentions(DEIT, SAMPLES / "coffee.png")
    assert (tensors["attentions"] - ref).abs().max().item() <= 1e-5
    assert (tensors["rollout"] - reference_rollout(ref, 0, 1, (14, 14))).abs().max().item() <= 1e-5


@needs_deit
def test_deit_human_output_patch_head_layer_and_svg(tmp_path):
    out = tmp_path / "o"
    result = invoke(SAMPLES / "chelsea.png", "-m", DEIT, "-o", out, "--layer", "5", "--head", "2", "--patch", "220,90",
                    "--format", "svg", "--head-fusion", "max", "--discard-ratio", "0.9")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "12 layers × 3 heads" in text and "grid 14×14" in text and "1 prefix token" in text
    assert "Egyptian cat" in text and "0.310" in text
    assert "patch (row 4, col 6)" in text  # 220/451*14 = 6.8 -> col 6; 90/300*14 = 4.2 -> row 4
    written = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert written == ["attention-layer5.svg", "patch-220-90-layer5.svg", "predictions.svg", "report.svg", "rollout.svg"]
    svg = (out / "report.svg").read_text()
    assert "layer 5, head 2" in svg and "discard ratio 0.9" in svg


# ---------------------------------------------------------------------------
# tiny families through the CLI


@pytest.mark.parametrize("kind", ["deit-distilled", "siglip", "dinov2-registers"])
def test_tiny_models_json_and_saved_tensors(kind, tiny, photo, tmp_path, one_thread):
    folder = tiny(kind)
    saved = tmp_path / "a.safetensors"
    doc = run_json(photo, "--model", folder, "--out", tmp_path / "o", "--save-attn", saved, "--format", "pdf")
    prefix = {"deit-distilled": 2, "siglip": 0, "dinov2-registers": 5}[kind]
    assert doc["prefix_tokens"] == prefix and doc["grid"] == [4, 4]
    assert doc["cls_index"] == (None if kind == "siglip" else 0)
    assert (doc["predictions"] is None) == (kind != "deit-distilled")
    assert doc["files"] and all(Path(f).suffix == ".pdf" for f in doc["files"])
    for f in doc["files"]:  # real PDFs, each holding a page with content
        data = Path(f).read_bytes()
        assert data.startswith(b"%PDF") and b"/Type /Page" in data and len(data) > 2000
    tensors, meta = load_saved(saved)
    ref, _ = eager_attentions(folder, photo)
    assert (tensors["attentions"] - ref).abs().max().item() <= 1e-5
    expected = reference_rollout(ref, doc["cls_index"], prefix, (4, 4))
    assert (tensors["rollout"] - expected).abs().max().item() <= 1e-5
    assert json.loads(meta["prefix_tokens"]) == prefix


def test_non_square_input_gives_a_non_square_grid(tiny, tmp_path):
    wide = make_photo(tmp_path / "wide.jpg", (80, 40))
    doc = run_json(wide, "--model", tiny("dinov2-nocrop"), "--out", tmp_path / "o")
    assert doc["grid"] == [4, 8] and doc["input_size"] == [28, 56]
    assert doc["crop_box"] == [0.0, 0.0, 80.0, 40.0]


# ---------------------------------------------------------------------------
# errors: one line on stderr, an exit code


def bad_files(tmp_path):
    files = {}
    files["missing"] = tmp_path / "missing.png"
    files["empty"] = tmp_path / "empty.jpg"
    files["empty"].write_bytes(b"")
    files["text"] = tmp_path / "notes.png"
    files["text"].write_text("not an image at all\n" * 10)
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    files["truncated"] = tmp_path / "cut.jpg"
    files["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[80:400] = bytes(320)
    files["corrupt"] = tmp_path / "corrupt.png"
    files["corrupt"].write_bytes(bytes(data))
    files["folder"] = tmp_path
    return files


@pytest.mark.parametrize("which", ["missing", "empty", "text", "truncated", "corrupt", "folder"])
def test_bad_image_files(which, tmp_path):
    path = bad_files(tmp_path)[which]
    result = invoke(path, "--out", tmp_path / "out")
    one_error_line(result, 4)


def test_bad_options(tiny, photo, tmp_path):
    vit = tiny("vit")
    cases = [
        (["--layer", "7"], 2, "--layer 7 is out of range"),
        (["--layer", "-3"], 2, "--layer -3 is out of range"),
        (["--head", "9"], 2, "--head 9"),
        (["--patch", "abc"], 2, "--patch must be X,Y"),
        (["--patch", "1,2,3"], 2, "--patch must be X,Y"),
        (["--patch", "500,10"], 2, "outside"),
        (["--patch", "-1,10"], 2, "outside"),
        (["--head-fusion", "median"], 2, "--head-fusion"),
        (["--discard-ratio", "1.5"], 2, "--discard-ratio"),
        (["--format", "gif"], 2, "--format"),
        (["--save-attn", tmp_path / "x.bin"], 5, ".safetensors"),
    ]
    for extra, code, needle in cases:
        result = invoke(photo, "--model", vit, "--out", tmp_path / "o", *extra)
        line = one_error_line(result, code)
        assert needle in line, line
    # DeiT-style processor: the crop leaves out the photo's border
    result = invoke(photo, "--model", tiny("deit-distilled"), "--out", tmp_path / "o", "--patch", "1,1")
    assert "outside the part of the photo the model saw" in one_error_line(result, 2)


def test_model_errors(tiny, photo, tmp_path):
    result = invoke(photo, "--model", make_vision_model(tmp_path, "swin"), "--out", tmp_path / "o")
    assert "windows" in one_error_line(result, 3)
    result = invoke(photo, "--model", tmp_path / "no-such-model", "--out", tmp_path / "o")
    one_error_line(result, 3)
    (tmp_path / "not-a-model").mkdir()
    result = invoke(photo, "--model", tmp_path / "not-a-model", "--out", tmp_path / "o")
    assert "config.json" in one_error_line(result, 3)


def test_output_folder_that_is_a_file(photo, tmp_path, tiny):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke(photo, "--model", tiny("vit"), "--out", blocker)
    one_error_line(result, 5)


def test_default_model_offline_and_not_cached(photo, tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    env.pop("TRANSFORMERS_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "attnviz", "image", str(photo), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnviz: error:")
    assert "facebook/deit-tiny-patch16-224" in lines[0] and "--model PATH" in lines[0]


# ---------------------------------------------------------------------------
# DINOv2: the sink case


@needs_dinov2
def test_dinov2_report_names_the_sink_and_offers_the_sink_free_view(tmp_path):
    out = tmp_path / "o"
    doc = run_json(SAMPLES / "chelsea.png", "--model", DINOV2, "--out", out, "--format", "svg")
    assert doc["grid"] == [16, 16] and doc["prefix_tokens"] == 1 and doc["predictions"] is None
    sinks = doc["sink_patches"]
    assert [(s["row"], s["col"]) for s in sinks] == [(2, 8)]
    assert 0.08 < sinks[0]["share"] < 0.2
    names = {Path(f).name for f in doc["files"]}
    assert names == {"report.svg", "attention-layer11.svg", "rollout.svg", "rollout-no-sinks.svg"}
    svg = (out / "report.svg").read_text()
    assert len(re.findall(r"<text\b", svg)) > 10  # text stays text (svg.fonttype none)
    words = " ".join(re.sub(r"<[^>]+>", " ", svg).split())
    assert "Possible attention sink: patch (row 2, col 8) takes" in words
    assert "not what the patch shows" in words
    assert "rollout without the flagged patch" in words
    assert 'id="sink' in svg and 'id="left-out' in svg  # the sink is outlined, and hatched where left out


def test_human_output_names_sinks(tmp_path, capsys):
    from attnviz.analysis.sinks import SinkPatch
    from attnviz.cli.image import _print_human
    from attnviz.pipelines.image import ImageRun
    from attnviz.types import AttentionMaps, ImageAttention

    maps = AttentionMaps("self", 2, 3, 17, 17)
    result = ImageAttention("m", "vit", "eager", Image.new("RGB", (8, 8)), (0, 0, 8, 8), (4, 4), 1, 0, maps)
    _print_human(ImageRun(result, "p.png", 1, None, "mean", 0.0, (SinkPatch(1, 2, 0.5, "rollout"),), files=(Path("r.png"),)))
    out = capsys.readouterr().out
    assert "m · 2 layers × 3 heads · grid 4×4 · 1 prefix token · backend eager" in out
    assert "attention sink: (row 1, col 2) 50% of the rollout (8x uniform)" in out
    assert "r.png" in out


def test_print_size_views_label_and_json_hold_what_is_drawn(tiny, photo, tmp_path):
    from PIL import Image

    out = tmp_path / "o"
    doc = run_json(photo, "--model", tiny("vit"), "--out", out, "--size", "page", "--dpi", "100", "--views", "heads,rollout",
                   "--label", "tiny ViT", "--scale", "per-head")
    assert sorted(Path(f).name for f in doc["files"]) == ["attention-layer1.png", "rollout.png"]
    assert doc["label"] == "tiny ViT" and doc["model"] == str(Path(tiny("vit")).resolve())
    assert doc["style"]["size"] == "page" and doc["style"]["scale"] == "per-head"
    rows, cols = doc["grid"]
    heads = doc["cls_maps"]["heads"]
    assert len(heads) == doc["num_heads"] and len(heads[0]["map"]) == rows and len(heads[0]["map"][0]) == cols
    total = sum(map(sum, heads[0]["map"]))
    assert total == pytest.approx(heads[0]["to_patches"], abs=1e-4) and heads[0]["to_prefix"] == pytest.approx(1 - total, abs=1e-4)
    assert len(doc["rollout_map"]) == rows
    with Image.open(out / "rollout.png") as im:
        assert im.size[0] == 690 and "tiny ViT" in im.text["Title"]
    plain = run_json(photo, "--model", tiny("vit"), "--out", tmp_path / "p")
    assert plain["label"] == "vit"  # the folder's name, not the path
