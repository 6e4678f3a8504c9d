"""Issue 21 (trust, round 2): what attnviz writes and what it loads.

A user's safetensors file is never replaced; broken checkpoints (NaN weights, a tensor of the wrong
shape, no tokenizer) are refused in one line; two runs into one folder never interleave; the files a
run removes are named; cheap mistakes are found before loading.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from attnviz.cli import app
from attnviz.errors import ModelError, OutputError, UsageError
from attnviz.report import MANIFEST, RunOutput, check_out_dir, check_tensor_path, describe_removed
from tiny import TEXT

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
QUERY = "encoder.layer.0.attention.self.query.weight"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result, code) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("attnviz: error:"), lines[0]
    return lines[0]


def temporaries(*folders: Path) -> list[str]:
    """attnviz's temporary entries (stages, claims) in ``folders``."""
    return sorted(p.name for f in folders if f.is_dir() for p in f.iterdir() if p.name.startswith(".attnviz-") and p.name.endswith(".part"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from tiny import make_text_model

    return make_text_model(tmp_path_factory.mktemp("trust2-text"), "bert")


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any weights load."""
    import attnviz.models

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(attnviz.models, "load_model", refuse)


def damaged(src: Path, dst: Path, change) -> Path:
    """A copy of the model folder ``src`` whose weights ``change(tensors)`` edited in place."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    change(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# ---------------------------------------------------------------------------
# High 1: --save-attn replaces only what attnviz provably wrote


def test_save_attn_never_replaces_a_users_attention_named_file(bert, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    save_file({"attentions": torch.ones(3)}, "mine.safetensors", metadata={"model": "my run"})
    before = Path("mine.safetensors").read_bytes()
    line = one_line(invoke("text", "hello there", "--model", bert, "--save-attn", "mine.safetensors"), 5)
    assert "mine.safetensors" in line and "attnviz did not write it" in line
    assert Path("mine.safetensors").read_bytes() == before
    assert not Path("attnviz-out").exists()


def test_is_attnviz_tensor_file_needs_the_format_mark(tmp_path):
    import torch

    from attnviz.report import is_attnviz_tensor_file, save_tensors

    guess = tmp_path / "guess.safetensors"
    save_file({"attentions": torch.ones(1, 1, 2, 2), "rollout": torch.ones(2, 2)}, guess, metadata={"model": "x", "tokens": "[]"})
    assert not is_attnviz_tensor_file(guess)
    ours = save_tensors(tmp_path / "ours.safetensors", {"attentions": torch.ones(1, 1, 2, 2)}, {"model": "x"})
    assert is_attnviz_tensor_file(ours)


# ---------------------------------------------------------------------------
# High 3 (weights) and Medium 6: broken checkpoints are refused in one line


def test_nan_weights_are_refused(bert, tmp_path):
    def poison(t):
        t[QUERY][:] = float("nan")

    model = damaged(bert, tmp_path / "nan", poison)
    line = one_line(invoke("text", TEXT, "--model", model, "--out", tmp_path / "o", "--json"), 3)
    assert QUERY in line and "NaN" in line
    assert not (tmp_path / "o").exists()


def test_infinite_weights_are_refused_by_the_loader(bert, tmp_path):
    from transformers import AutoModel

    from attnviz.models import LoadOptions, load_model, resolve_model

    def poison(t):
        t["embeddings.word_embeddings.weight"][7, 3] = float("-inf")

    model = damaged(bert, tmp_path / "inf", poison)
    with pytest.raises(ModelError, match="embeddings.word_embeddings.weight holds infinite values"):
        load_model(resolve_model(str(model)), AutoModel, LoadOptions())


def test_a_tensor_of_the_wrong_shape_is_a_model_error(bert, tmp_path):
    import torch

    def reshape(t):
        t[QUERY] = torch.zeros(16, 32)

    model = damaged(bert, tmp_path / "shape", reshape)
    line = one_line(invoke("text", TEXT, "--model", model, "--out", tmp_path / "o"), 3)
    assert QUERY in line and "[16, 32]" in line and "[32, 32]" in line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------
# Medium 8: a model folder without a tokenizer


def test_folder_without_tokenizer_files_says_so(bert, tmp_path):
    model = tmp_path / "bare"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(bert / name, model / name)
    line = one_line(invoke("text", TEXT, "--model", model, "--out", tmp_path / "o"), 3)
    assert "has no tokenizer" in line


def test_tokenizer_of_special_tokens_only_says_so(bert, tmp_path):
    """A tokenizer_config.json without its vocabulary: transformers builds a BERT tokenizer that knows
    only [CLS] [SEP] [PAD] [MASK] [UNK], and every word became [UNK] (exit 0, no warning)."""
    model = tmp_path / "config-only"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        shutil.copy(bert / name, model / name)
    line = one_line(invoke("text", TEXT, "--model", model, "--out", tmp_path / "o"), 3)
    assert "no usable tokenizer" in line and "[UNK]" in line
    assert not (tmp_path / "o").exists()


def test_small_real_tokenizers_still_load(tiny_models):
    from attnviz.inputs.tokens import load_tokenizer
    from attnviz.models import resolve_model

    for kind in ("gpt2", "t5"):  # trained here on three sentences: a few hundred entries
        assert load_tokenizer(resolve_model(str(tiny_models(kind)))).is_fast


# ---------------------------------------------------------------------------
# Medium 10: one run at a time per output folder

HOLDER = textwrap.dedent("""
    import sys
    from attnviz.report import RunOutput
    out = RunOutput(sys.argv[1], command="holder")
    out.check(["a.txt"], tensor=sys.argv[2] if len(sys.argv) > 2 else None)
    print("ready", flush=True)
    if sys.stdin.readline().strip() == "commit":
        with out:
            out.path("a.txt").write_text("held")
        print("done", flush=True)
""")


def hold(folder: Path, *tensor: Path) -> subprocess.Popen:
    """Another process that has claimed ``folder`` (and ``tensor``; RunOutput.check) and waits for a line on stdin."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), *map(str, tensor)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("exists", [False, True])
def test_a_second_run_into_a_claimed_folder_fails_before_working(bert, tmp_path, no_weights, exists):
    out = tmp_path / "out"
    if exists:
        out.mkdir()
    holder = hold(out)
    try:
        with pytest.raises(OutputError, match=f"another attnviz run \\(pid {holder.pid}, 'holder'\\)"):
            RunOutput(out, command="text").check(["b.txt"])
        line = one_line(invoke("text", TEXT, "--model", bert, "--out", out), 5)  # no_weights: fails before loading
        assert f"pid {holder.pid}" in line and "--out" in line
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "done"
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    assert (out / "a.txt").read_text() == "held"
    assert temporaries(tmp_path, out) == []  # the claim went with the commit
    again = RunOutput(out, command="text")  # and the folder is free again
    again.check(["b.txt"])
    with again:
        again.path("b.txt").write_text("b")
    assert [p.name for p in again.removed] == ["a.txt"]
    assert temporaries(tmp_path, out) == []


RACER = textwrap.dedent("""
    import sys, time
    from attnviz.errors import OutputError
    from attnviz.report import RunOutput
    out = RunOutput(sys.argv[1], command="racer")
    while time.time() < float(sys.argv[2]):
        pass
    try:
        out.check(["a.txt"])
    except OutputError as exc:
        print("refused", exc, flush=True)
        sys.exit(5)
    print("ready", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("exists", [False, True])
def test_runs_started_together_get_the_folder_once(tmp_path, exists):
    out = tmp_path / "out"
    if exists:
        out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.time() + 1.5  # all check() at the same moment
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(out), str(start)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    try:
        firsts = [p.stdout.readline().strip() for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert sum(line == "ready" for line in firsts) == 1, firsts
    assert sorted(p.returncode for p in procs) == [0, 5, 5, 5]
    assert temporaries(tmp_path, out) == []


def test_a_claim_of_a_dead_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    holder = hold(out)
    holder.kill()
    holder.wait(timeout=30)
    holder.stdin.close()
    assert len(temporaries(tmp_path)) == 1  # SIGKILL leaves the claim behind ...
    run = RunOutput(out, command="text")
    run.check(["a.txt"])  # ... and it does not block the next run, which removes it
    with run:
        run.path("a.txt").write_text("mine")
    assert temporaries(tmp_path, out) == []


def test_an_interrupted_holder_leaves_no_claim(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    script = "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n" + HOLDER
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 143
    proc.stdin.close()
    assert temporaries(tmp_path) == []


def test_an_abandoned_run_output_releases_its_claim(tmp_path):
    """A pipeline that fails between check() and the commit (e.g. the model does not load) leaves no claim."""
    out = tmp_path / "out"
    run = RunOutput(out, command="text")
    run.check(["a.txt"])
    assert len(temporaries(tmp_path)) == 1
    del run
    assert temporaries(tmp_path) == []
    failed = RunOutput(out, command="text")
    failed.check(["a.txt"])
    with pytest.raises(RuntimeError):
        with failed:
            raise RuntimeError("boom")
    assert temporaries(tmp_path) == [] and not out.exists()


def test_save_attn_outside_the_folder_is_claimed_too(tmp_path):
    holder = hold(tmp_path / "out1", tmp_path / "new" / "attn.safetensors")
    try:
        with pytest.raises(OutputError, match=f"--save-attn .* another attnviz run \\(pid {holder.pid}"):
            RunOutput(tmp_path / "out2", command="text").check(["a.txt"], tensor=tmp_path / "new" / "attn.safetensors")
        with pytest.raises(OutputError, match="--save-attn .* another attnviz run"):  # the folder it creates, too
            RunOutput(tmp_path / "out2", command="text").check(["a.txt"], tensor=tmp_path / "new" / "other.safetensors")
        free = RunOutput(tmp_path / "out2", command="text")  # another file beside the holder's output folder is free
        free.check(["a.txt"], tensor=tmp_path / "attn.safetensors")
        free.abort()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------------------
# Medium 11: what a run removed is said


def test_removed_files_of_the_previous_run_are_listed(tmp_path):
    out = tmp_path / "attnviz-out"
    first = RunOutput(out, command="text")
    names = ["head-view.png", "matrix.png", "model-view.png", "focus.png", "edited.png"]
    with first:
        for name in names:
            first.path(name).write_bytes(name.encode())
    assert describe_removed(first) is None
    (out / "edited.png").write_bytes(b"changed by the user")
    second = RunOutput(out, command="image", settings={"model": "vit"})
    with second:
        second.path("rollout.png").write_bytes(b"r")
    assert sorted(p.name for p in second.removed) == sorted(names[:4])
    assert second.previous_command == "text"
    assert second.left_alone == [out / "edited.png"]
    assert describe_removed(second) == (
        f"removed 4 files of the previous 'text' run in {out}: head-view.png, matrix.png, model-view.png, focus.png"
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "rollout.png", "edited.png"])
    third = RunOutput(out, command="image")  # the same files again: nothing removed
    with third:
        third.path("rollout.png").write_bytes(b"r2")
    assert third.removed == [] and describe_removed(third) is None


def test_removed_list_is_cut_after_six_names(tmp_path):
    first = RunOutput(tmp_path, command="heads")
    with first:
        for i in range(9):
            first.path(f"f{i}.png").write_bytes(b"x")
    second = RunOutput(tmp_path, command="text")
    with second:
        pass
    line = describe_removed(second)
    assert line.startswith("removed 9 files of the previous 'heads' run in ") and line.endswith("f5.png, and 3 more")


# ---------------------------------------------------------------------------
# Low: cheap mistakes, found before loading


def test_empty_out_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value in ("", "  "):
        with pytest.raises(OutputError, match="--out is empty"):
            check_out_dir(value)
        with pytest.raises(OutputError, match="--out is empty"):
            RunOutput(value, command="text")
    assert check_out_dir(".") == Path(".")
    assert list(tmp_path.iterdir()) == []


def test_symlink_loop_is_called_a_loop(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for out in (loop, loop / "sub"):
        with pytest.raises(OutputError, match="symbolic link loop"):
            RunOutput(out, command="text")
    with pytest.raises(OutputError, match="symbolic link loop"):
        check_tensor_path(loop / "a.safetensors")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="which does not exist"):
        RunOutput(dangling / "sub", command="text")


def test_unwritable_save_attn_folder_is_found_before_loading(bert, tmp_path, no_weights, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    with pytest.raises(OutputError, match="permission denied"):
        check_tensor_path(locked / "deeper" / "a.safetensors")
    line = one_line(invoke("text", TEXT, "--model", bert, "--out", tmp_path / "o", "--save-attn", locked / "a.safetensors"), 5)
    assert f"cannot write to '{locked}'" in line


@pytest.mark.parametrize("args,words", [
    (("--device", "tpu"), "--device must be"),
    (("--dtype", "int8"), "--dtype must be"),
])
def test_bad_device_and_dtype_are_usage_errors_before_loading(bert, tmp_path, no_weights, args, words):
    line = one_line(invoke("text", TEXT, "--model", bert, "--out", tmp_path / "o", *args), 2)
    assert words in line


def test_device_option_checks():
    from attnviz.models import _torch_dtype, check_device_options, pick_device

    check_device_options("cpu", "bfloat16", None)
    for call in (lambda: check_device_options("tpu"), lambda: check_device_options(dtype="int8"),
                 lambda: check_device_options(device_map="nonsense"), lambda: pick_device("tpu"), lambda: _torch_dtype("int8")):
        with pytest.raises(UsageError):
            call()


def test_uncached_hub_id_fails_at_once_offline(monkeypatch):
    from huggingface_hub import constants

    from attnviz import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    models._hub_offline.cache_clear()
    start = time.perf_counter()
    with pytest.raises(ModelError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE is set"):
        models.load_config(models.resolve_model("org/not-cached-anywhere"), models.LoadOptions())
    assert time.perf_counter() - start < 2

    # without HF_HUB_OFFLINE and without a network: one connection attempt, not ~30 s of retries
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    import socket

    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    models._hub_offline.cache_clear()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelError, match="not in the local Hugging Face cache.*cannot be reached"):
            models.load_config(models.ModelSource("org/not-cached-anywhere", "org/not-cached-anywhere"), models.LoadOptions())
    finally:
        models._hub_offline.cache_clear()
    assert time.perf_counter() - start < 2


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_out_folder_that_takes_no_files_is_found_at_check():
    """``--out /proc/x`` passes os.access as root; the claim file written at check() finds it before any work."""
    with pytest.raises(OutputError, match="cannot write to '/proc'"):
        RunOutput("/proc/attnviz-test-out", command="text").check(["a.png"])


def test_hub_behind_a_proxy_is_not_probed(monkeypatch):
    """With a proxy configured, a direct connection failing says nothing: huggingface_hub decides."""
    import socket

    from huggingface_hub import constants

    from attnviz import models

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError(101, "unreachable")))
    models._hub_offline.cache_clear()
    try:
        assert models._hub_offline() is None
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.delenv("https_proxy", raising=False)
        models._hub_offline.cache_clear()
        assert "cannot be reached" in models._hub_offline()
    finally:
        models._hub_offline.cache_clear()


def test_a_mismatched_task_head_is_a_new_head_not_an_error(bert, tmp_path):
    """A classifier saved for 2 labels, loaded with a config of 3: the attention path is complete, so the
    model loads and only the head counts as new (shown without predictions)."""
    import json

    from transformers import AutoConfig, AutoModelForSequenceClassification

    from attnviz.models import LoadOptions, load_model, resolve_model

    folder = tmp_path / "cls"
    AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"L{i}" for i in range(3)}
    config["label2id"] = {f"L{i}": i for i in range(3)}
    (folder / "config.json").write_text(json.dumps(config))
    assert AutoConfig.from_pretrained(folder).num_labels == 3
    model = load_model(resolve_model(str(folder)), AutoModelForSequenceClassification, LoadOptions())
    assert set(model.attnviz_new_head) == {"classifier.weight", "classifier.bias"}
    assert model.attnviz_random_weights == ()
    assert model.classifier.weight.shape == (3, 32)
