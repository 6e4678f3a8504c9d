"""Issue 7, by fault injection: only the model asked for, never a destroyed file, all or nothing, one line per bad input."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from attnviz.cli import app
from tiny import TEXT
from vision_tiny import make_photo, make_vision_model

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


def tree_hash(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links as their target text), hashed: to compare a folder byte for byte."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from tiny import make_text_model

    return make_text_model(tmp_path_factory.mktemp("trust-text"), "bert")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return make_vision_model(tmp_path_factory.mktemp("trust-vision"), "vit")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return make_photo(tmp_path_factory.mktemp("trust-photo") / "p.png", (48, 40))


def copy_model(src: Path, dst: Path, drop=lambda name: False, keep_only=None) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    if keep_only is not None:
        tensors = keep_only
    else:
        tensors = {k: v for k, v in tensors.items() if not drop(k)}
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# ---------------------------------------------------------------------------
# 1. weights must cover the model


def test_checkpoint_without_the_models_tensors_is_refused(bert, tmp_path):
    import torch

    broken = copy_model(bert, tmp_path / "m", keep_only={"something.else": torch.zeros(3)})
    line = one_line(invoke("text", TEXT, "--model", broken, "--out", tmp_path / "o"), 3)
    assert "lacks" in line and "embeddings" in line, line
    assert not (tmp_path / "o").exists()


def test_one_missing_attention_tensor_is_refused(bert, tmp_path):
    broken = copy_model(bert, tmp_path / "m", drop=lambda k: k.endswith("layer.2.attention.self.query.weight"))
    line = one_line(invoke("text", TEXT, "--model", broken, "--out", tmp_path / "o"), 3)
    assert "lacks 1 tensor" in line and "encoder.layer.2.attention.self.query.weight" in line, line


def test_vision_layer_removed_is_refused(vit, photo, tmp_path):
    broken = copy_model(vit, tmp_path / "m", drop=lambda k: ".layer.1." in k)
    line = one_line(invoke("image", photo, "--model", broken, "--out", tmp_path / "o"), 3)
    assert "16 tensors the attention depends on" in line and "layers.1.attention" in line, line


def test_missing_classifier_head_only_drops_predictions(vit, photo, tmp_path):
    headless = copy_model(vit, tmp_path / "m", drop=lambda k: k.startswith("classifier."))
    result = invoke("image", photo, "--model", headless, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["predictions"] is None and doc["random_weights"] is None
    assert "no predictions" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "predictions.png").exists()


def test_random_weights_ok_says_so_everywhere(bert, tmp_path):
    broken = copy_model(bert, tmp_path / "m", drop=lambda k: ".layer.0." in k)
    result = invoke("text", TEXT, "--model", broken, "--out", tmp_path / "o", "--random-weights-ok", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["random_weights"].startswith("random weights:")
    assert "random weights" in result.stderr
    human = invoke("text", TEXT, "--model", broken, "--out", tmp_path / "o2", "--random-weights-ok")
    assert "RANDOM WEIGHTS" in human.stdout


def test_random_weights_stamp_is_drawn_on_every_figure(tmp_path):
    from matplotlib.figure import Figure

    from attnviz.report import RunOutput

    out = RunOutput(tmp_path / "o", command="test", stamp="RANDOM WEIGHTS: not the trained model")
    fig = Figure()
    with out:
        out.figure(fig, "a", "png")
    assert any(t.get_text() == "RANDOM WEIGHTS: not the trained model" for t in fig.texts)
    assert (tmp_path / "o" / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_complete_random_checkpoints_still_load(bert, tmp_path):
    result = invoke("text", TEXT, "--model", bert, "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["random_weights"] is None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_is_a_model_error(bert, tmp_path, damage):
    broken = tmp_path / "m"
    shutil.copytree(bert, broken)
    w = broken / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    line = one_line(invoke("text", TEXT, "--model", broken, "--out", tmp_path / "o"), 3)
    assert "truncated or corrupt" in line


# ---------------------------------------------------------------------------
# 2. attnviz writes only what it owns


def test_user_file_in_the_way_is_kept_unless_force(bert, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "head-view.png").write_bytes(b"my own figure")
    (out / "notes.txt").write_text("mine")
    before = tree_hash(out)
    line = one_line(invoke("text", TEXT, "--model", bert, "--out", out), 5)
    assert "head-view.png" in line and "--force" in line
    assert tree_hash(out) == before
    ok = invoke("text", TEXT, "--model", bert, "--out", out, "--force")
    assert ok.exit_code == 0, ok.output
    assert (out / "head-view.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "notes.txt").read_text() == "mine"


def test_symlink_in_the_way_is_not_written_through(bert, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    target = tmp_path / "precious.png"
    target.write_bytes(b"precious")
    (out / "matrix.png").symlink_to(target)
    before = tree_hash(tmp_path)
    one_line(invoke("text", TEXT, "--model", bert, "--out", out), 5)
    assert tree_hash(tmp_path) == before
    ok = invoke("text", TEXT, "--model", bert, "--out", out, "--force")
    assert ok.exit_code == 0, ok.output
    assert target.read_bytes() == b"precious"  # the link was replaced, not written through
    assert not (out / "matrix.png").is_symlink()


def test_a_new_run_replaces_the_previous_runs_files_and_nothing_else(bert, tmp_path):
    out = tmp_path / "o"
    first = invoke("text", TEXT, "--model", bert, "--out", out, "--token", "it")
    assert first.exit_code == 0, first.output
    assert (out / "focus-view.png").exists()
    (out / "mine.txt").write_text("user")
    second = invoke("text", TEXT, "--model", bert, "--out", out, "--json")
    assert second.exit_code == 0, second.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [".attnviz-manifest.json", "head-view.png", "matrix.png", "mine.txt", "model-view.png"]
    manifest = json.loads((out / ".attnviz-manifest.json").read_text())
    assert sorted(manifest["files"]) == ["head-view.png", "matrix.png", "model-view.png"]
    assert manifest["command"] == "text" and manifest["attnviz"] and manifest["settings"]["token"] is None


def test_an_edited_previous_output_is_left_alone(bert, tmp_path):
    out = tmp_path / "o"
    assert invoke("text", TEXT, "--model", bert, "--out", out, "--token", "it").exit_code == 0
    (out / "focus-view.png").write_bytes(b"edited by the user")
    result = invoke("text", TEXT, "--model", bert, "--out", out)
    assert result.exit_code == 0
    assert (out / "focus-view.png").read_bytes() == b"edited by the user"
    assert "left" in result.stderr and "focus-view.png" in result.stderr


def test_save_attn_never_onto_the_models_files(bert, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(bert, model)
    before = tree_hash(model)
    for force in ((), ("--force",)):
        line = one_line(invoke("text", TEXT, "--model", model, "--out", tmp_path / "o", "--save-attn", model / "model.safetensors", *force), 5)
        assert "the model is loaded from that file" in line
    assert tree_hash(model) == before
    assert not (tmp_path / "o").exists()


def test_save_attn_onto_a_foreign_safetensors_is_refused(bert, tmp_path):
    import torch

    foreign = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, foreign)
    before = foreign.read_bytes()
    one_line(invoke("text", TEXT, "--model", bert, "--out", tmp_path / "o", "--save-attn", foreign), 5)
    assert foreign.read_bytes() == before
    # an attention file attnviz wrote may be replaced
    mine = tmp_path / "attn.safetensors"
    assert invoke("text", TEXT, "--model", bert, "--out", tmp_path / "o", "--save-attn", mine).exit_code == 0
    again = invoke("text", "A different text.", "--model", bert, "--out", tmp_path / "o", "--save-attn", mine)
    assert again.exit_code == 0, again.output
    from safetensors import safe_open

    with safe_open(str(mine), "pt") as f:
        assert f.metadata()["format"] == "attnviz-attention"
        assert "different" in f.metadata()["tokens"]


# ---------------------------------------------------------------------------
# 3. all or nothing


def _fail_at(monkeypatch, n: int):
    """Make the n-th figure write fail with ENOSPC (a full disk)."""
    import attnviz.report as report

    real = report.write_figure
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise report.OutputError(f"cannot write: {os.strerror(errno.ENOSPC)}")
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "write_figure", failing)


def test_disk_full_at_the_third_figure_keeps_the_previous_run(bert, tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert invoke("text", TEXT, "--model", bert, "--out", out, "--token", "it", "--save-attn", out / "a.safetensors").exit_code == 0
    (out / "mine.txt").write_text("user")
    before = tree_hash(tmp_path)
    _fail_at(monkeypatch, 3)
    result = invoke("text", "Another text it has.", "--model", bert, "--out", out, "--token", "it", "--save-attn", out / "a.safetensors")
    assert result.exit_code == 5 and "No space left" in result.stderr
    assert tree_hash(tmp_path) == before  # byte for byte, no temporary left


def test_failed_run_creates_no_folder(bert, tmp_path, monkeypatch):
    _fail_at(monkeypatch, 2)
    result = invoke("text", TEXT, "--model", bert, "--out", tmp_path / "new" / "deeper", "--save-attn", tmp_path / "t" / "a.safetensors")
    assert result.exit_code == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_run_are_removed_by_the_next(bert, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale_dir = out / f".attnviz-{dead.pid}-abcd1234.part"
    stale_dir.mkdir()
    (stale_dir / "head-view.png").write_bytes(b"half")
    stale_file = out / f".attnviz-{dead.pid}-ef01.part"
    stale_file.write_bytes(b"x" * 100)
    alive = out / f".attnviz-{os.getpid()}-0000.part"
    alive.write_bytes(b"in use")
    assert invoke("text", TEXT, "--model", bert, "--out", out).exit_code == 0
    assert not stale_dir.exists() and not stale_file.exists()
    assert alive.exists()  # a running process's temporary file is not touched


SLOW_SAVE = """
import sys, time
import attnviz.pipelines.text as t
import attnviz.report as r
t.FULL_BUDGET = 0  # stream --save-attn layer by layer
real = r.AttentionWriter.write_layer
def slow(self, *args):
    real(self, *args)
    print("layer", flush=True)
    time.sleep(30)
r.AttentionWriter.write_layer = slow
from attnviz.cli import main
sys.argv = ["attnviz"] + sys.argv[1:]
main()
"""


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_during_a_streamed_save_leaves_nothing(bert, tmp_path, sig, code):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    out, tensor = tmp_path / "o", tmp_path / "t" / "attn.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, "text", TEXT, "--model", str(bert), "--out", str(out), "--save-attn", str(tensor)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.stdout.readline().strip() != "layer":
            pass
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == f"attnviz: stopped by {signal.Signals(sig).name}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .part file, no folder


# ---------------------------------------------------------------------------
# 4. check before loading: a mistake costs no weight loading


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any weights load."""
    import attnviz.models

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(attnviz.models, "load_model", refuse)


@pytest.mark.parametrize("args,code,words", [
    (("--layer", "9"), 2, "out of range"),
    (("--head", "7"), 2, "out of range"),
    (("--token", "dog"), 2, "not in the input"),
    (("--max-length", "0"), 2, "--max-length"),
    (("--device-map", "cuda:3"), 2, "--device-map"),
    (("--device-map", "nonsense"), 2, "--device-map"),
])
def test_text_mistakes_are_caught_before_loading(bert, tmp_path, no_weights, args, code, words):
    line = one_line(invoke("text", TEXT, "--model", bert, "--out", tmp_path / "o", *args), code)
    assert words in line
    assert not (tmp_path / "o").exists()


def test_output_in_the_way_is_caught_before_loading(bert, tmp_path, no_weights):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "matrix.png").write_bytes(b"mine")
    one_line(invoke("text", TEXT, "--model", bert, "--out", tmp_path / "o"), 5)


def test_image_mistakes_are_caught_before_loading(vit, photo, tmp_path, no_weights):
    line = one_line(invoke("image", photo, "--model", vit, "--patch", "1000,5", "--out", tmp_path / "o"), 2)
    assert "is outside the photo: x in [0, " in line
    one_line(invoke("image", photo, "--model", vit, "--layer", "5", "--out", tmp_path / "o"), 2)


# ---------------------------------------------------------------------------
# 5. one line, the right exit code


@pytest.mark.parametrize("args,words", [
    (("text", "hi", "--layer", "x"), "'--layer'"),
    (("text", "hi", "--nope"), "No such option: --nope"),
    (("image",), "Missing argument"),
    (("nonsense",), "No such command"),
])
def test_parse_errors_are_one_line(args, words):
    proc = subprocess.run([sys.executable, "-m", "attnviz", *args], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("attnviz: error:") and words in lines[0], proc.stderr
    assert len(lines) == 1 or (lines[1].startswith("Try '") and lines[1].endswith("--help'."))


def test_dash_h_is_help():
    result = invoke("text", "-h")
    assert result.exit_code == 0 and "--token" in result.stdout


def test_text_file_rules(bert, tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    line = one_line(invoke("text", "--text-file", fifo, "--model", bert, "--out", tmp_path / "o"), 4)
    assert "not a regular file" in line
    one_line(invoke("text", "--text-file", "/dev/zero", "--model", bert, "--out", tmp_path / "o"), 4)
    import attnviz.pipelines.text as common

    monkeypatch.setattr(common, "TEXT_FILE_LIMIT", 100)
    big = tmp_path / "big.txt"
    big.write_text("word " * 100)
    assert "at most" in one_line(invoke("text", "--text-file", big, "--model", bert, "--out", tmp_path / "o"), 4)
    monkeypatch.setattr(common, "TEXT_FILE_LIMIT", 16 * 2**20)
    result = invoke("text", "--text-file", "-", "--model", bert, "--out", tmp_path / "o", "--json", input=TEXT)
    assert result.exit_code == 0, result.output
    assert "animal" in json.loads(result.stdout)["tokens"]


def test_allow_pickle_is_not_suggested_when_given(tmp_path):
    from tiny import TOKENIZERS, text_config
    from transformers import AutoModel

    tok = TOKENIZERS["bert"]()
    folder = tmp_path / "m"
    AutoModel.from_config(text_config("bert", len(tok))).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    (folder / "model.safetensors").rename(folder / "other.bin")  # neither loadable safetensors nor a real pickle
    result = invoke("text", TEXT, "--model", folder, "--allow-pickle", "--out", tmp_path / "o")
    assert result.exit_code == 3
    assert "--allow-pickle" not in result.stderr.split("error:", 1)[1]


def test_save_attn_inside_a_new_out_folder_lands_with_it(bert, tmp_path):
    """--out new/figs and --save-attn new/attn.safetensors share the folder this run creates."""
    result = invoke("text", TEXT, "--model", bert, "--out", tmp_path / "new" / "figs", "--save-attn", tmp_path / "new" / "attn.safetensors")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["attn.safetensors", "figs"]
    assert (tmp_path / "new" / "figs" / "head-view.png").exists()
    assert not [p for p in tmp_path.rglob(".attnviz-*.part")]


def test_a_commit_that_fails_leaves_no_stage(tmp_path):
    from matplotlib.figure import Figure

    from attnviz.errors import OutputError
    from attnviz.report import RunOutput

    out = tmp_path / "o"
    out.mkdir()
    run = RunOutput(out, command="test")
    with pytest.raises(OutputError):
        with run:
            run.figure(Figure(), "a", "png")
            (out / "a.png").write_bytes(b"appeared during the run")  # a user's file, found again at commit
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    assert (out / "a.png").read_bytes() == b"appeared during the run"


def test_random_weights_html_says_so(bert, tmp_path):
    broken = copy_model(bert, tmp_path / "m", drop=lambda k: ".layer.0." in k)
    result = invoke("text", TEXT, "--model", broken, "--out", tmp_path / "o", "--random-weights-ok", "--format", "html")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "o" / "report.html").read_text()
    assert "RANDOM WEIGHTS: not the trained model" in page[:page.index("<body>") + 400]


LAYER_CHECK = """
import sys
from attnviz.cli import main
sys.argv = ["attnviz"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    print(exc.code, "torch" in sys.modules, "transformers" in sys.modules)
"""


@pytest.mark.parametrize("command", ["text", "image"])
def test_layer_and_head_ranges_need_no_torch(bert, vit, photo, tmp_path, command):
    """--layer/--head are checked from config.json alone: milliseconds, before torch or transformers is imported."""
    args = ["text", TEXT, "--model", str(bert)] if command == "text" else ["image", str(photo), "--model", str(vit)]
    for bad in (["--layer", "9"], ["--head", "-9"]):
        proc = subprocess.run([sys.executable, "-c", LAYER_CHECK, *args, *bad, "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
        assert "out of range" in proc.stderr
