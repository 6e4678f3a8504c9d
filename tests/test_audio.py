"""attnviz audio: every saved tensor equals eager attention (WavLM: torch's own per-head multi-head attention on the
module's inputs, since its eager output_attentions are head means), word timestamps equal
generate(return_token_timestamps=True), audio is mixed to mono and resampled, and bad input gets one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import audio_tiny as A
from attnviz.cli import app
from cli_checks import load_saved, one_error_line

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # slow: the fast tier is pytest -m 'not slow'; one_thread: conftest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
WHISPER_EN = SHARED / "models" / "whisper-tiny.en"
SPEECH = SHARED / "samples" / "speech"
TOL = 1e-5
runner = CliRunner()
needs_shared = pytest.mark.skipif(not (WHISPER_EN / "model.safetensors").exists() or not SPEECH.exists(),
                                  reason="../shared/models/whisper-tiny.en and ../shared/samples/speech are absent "
                                         "(real weights live beside the project, not in it)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-audio")

    def get(kind: str) -> Path:
        return A.make_whisper(root) if kind == "whisper" else A.make_encoder(root, kind)

    return get


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return A.write_clip(tmp_path_factory.mktemp("clips") / "tone.wav", 1.5)


def invoke(*args, input=None):
    return runner.invoke(app, ["audio", *[str(a) for a in args]], input=input)


def run_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)




def close(a, b, tol=TOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert float((a.float() - b.float()).abs().max()) <= tol


def model_inputs(folder, path):
    """The eager model, and its inputs for ``path`` prepared the independent way (soundfile, mean, soxr)."""
    import soundfile as sf
    import soxr
    import transformers as T

    fe = T.AutoFeatureExtractor.from_pretrained(folder)
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(1)
    if rate != fe.sampling_rate:
        mono = soxr.resample(mono, rate, fe.sampling_rate, quality="HQ")
    config = T.AutoConfig.from_pretrained(folder)
    if config.model_type == "whisper":
        model = T.WhisperForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
        batch = fe(mono, sampling_rate=fe.sampling_rate, return_tensors="pt", return_attention_mask=True)
        return model, batch
    model = T.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    return model, fe(mono, sampling_rate=fe.sampling_rate, return_tensors="pt")


# ---------------------------------------------------------------------------
# exactness


def test_whisper_saved_tensors_equal_eager(models, clip, tmp_path):
    folder = models("whisper")
    doc = run_json(clip, "-m", folder, "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    saved, meta = load_saved(tmp_path / "a.safetensors")
    ids = torch.tensor(json.loads(meta["input_ids"]))[None]
    assert [t["id"] for t in doc["tokens"]] == ids[0].tolist()
    model, batch = model_inputs(folder, clip)
    with torch.no_grad():
        greedy = model.generate(batch["input_features"], attention_mask=batch["attention_mask"], return_dict_in_generate=True)
        out = model(input_features=batch["input_features"], decoder_input_ids=ids, output_attentions=True)
    assert torch.equal(greedy["sequences"], ids)  # the transcript is model.generate's own greedy output
    close(saved["encoder_attentions"], torch.stack(out.encoder_attentions)[:, 0])
    close(saved["cross_attentions"], torch.stack(out.cross_attentions)[:, 0])
    close(saved["decoder_attentions"], torch.stack(out.decoder_attentions)[:, 0])
    assert saved["cross_attentions"].shape == (2, 4, ids.shape[1], 200)  # [L, H, T, F]: the 4 s window's frames
    assert doc["frames"] == 75 and doc["window_frames"] == 200 and doc["frame_s"] == 0.02
    assert json.loads(meta["prompt_length"]) == 2 and json.loads(meta["alignment_heads"]) == A.ALIGNMENT_HEADS


@pytest.mark.parametrize("kind", [k for k in A.ENCODER_KINDS if k != "wavlm"])
def test_encoder_saved_tensors_equal_eager(kind, models, clip, tmp_path):
    folder = models(kind)
    doc = run_json(clip, "-m", folder, "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    saved, _ = load_saved(tmp_path / "a.safetensors")
    model, batch = model_inputs(folder, clip)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    close(saved["encoder_attentions"], torch.stack(out.attentions)[:, 0])
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(batch["input_values"].shape[-1])))
    assert doc["frames"] == frames and saved["encoder_attentions"].shape == (2, 4, frames, frames)
    assert doc["frame_s"] == pytest.approx(80 / 16000) and doc["text"] is None if kind != "wav2vec2" else True


def test_wavlm_heads_equal_torch_multi_head_attention(models, clip, tmp_path):
    """WavLM's eager output_attentions are head means; torch's own multi_head_attention_forward with
    average_attn_weights=False on each module's inputs and gated bias gives every head: the saved maps equal it,
    and their head mean equals what transformers returns."""
    import torch.nn.functional as F

    folder = models("wavlm")
    doc = run_json(clip, "-m", folder, "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    assert doc["backend"] == "wavlm-recomputed" and doc["verification"]["status"] == "verified"
    diffs = doc["verification"]["max_abs_diff"]
    assert set(diffs) == {"head mean", "output"} and 0 <= max(diffs.values()) <= 1e-5
    saved, _ = load_saved(tmp_path / "a.safetensors")
    model, batch = model_inputs(folder, clip)
    got = []

    def hook(module, args, kwargs, output):
        h = kwargs.get("hidden_states", args[0] if args else None)
        bias = output[2]
        B, T, D = h.shape
        H = module.num_heads
        g = h.view(B, T, H, -1).permute(0, 2, 1, 3)
        proj = module.gru_rel_pos_linear(g).view(B, H, T, 2, 4).sum(-1)
        a, b = torch.sigmoid(proj).chunk(2, dim=-1)
        gated = ((a * (b * module.gru_rel_pos_const - 1.0) + 2.0).view(B * H, -1, 1) * bias).view(-1, T, T)
        x = h.transpose(0, 1)
        _, w = F.multi_head_attention_forward(
            x, x, x, D, H, torch.empty([0]), torch.cat((module.q_proj.bias, module.k_proj.bias, module.v_proj.bias)),
            None, None, False, 0.0, module.out_proj.weight, module.out_proj.bias, False, None, need_weights=True,
            attn_mask=gated, use_separate_proj_weight=True, q_proj_weight=module.q_proj.weight,
            k_proj_weight=module.k_proj.weight, v_proj_weight=module.v_proj.weight, average_attn_weights=False)
        got.append(w[0])

    mods = [m for m in model.modules() if type(m).__name__ == "WavLMAttention"]
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    for h in handles:
        h.remove()
    close(saved["encoder_attentions"], torch.stack(got))
    close(saved["encoder_attentions"].mean(1), torch.stack(out.attentions)[:, 0, 0])
    assert not torch.allclose(saved["encoder_attentions"][:, 0], saved["encoder_attentions"][:, 1])  # heads differ


def test_word_timestamps_equal_generate(models, clip, tmp_path):
    folder = models("whisper")
    doc = run_json(clip, "-m", folder, "--out", tmp_path / "o")
    model, batch = model_inputs(folder, clip)
    with torch.no_grad():
        ref = model.generate(batch["input_features"], attention_mask=batch["attention_mask"],
                             return_token_timestamps=True, return_dict_in_generate=True)
    assert [t["id"] for t in doc["tokens"]] == ref["sequences"][0].tolist()
    ends = np.array([t["end_s"] for t in doc["tokens"]])
    assert np.abs(ends - ref["token_timestamps"][0].numpy()).max() <= 0.02 + 1e-6  # one frame
    assert doc["alignment_heads"] == A.ALIGNMENT_HEADS and doc["alignment_heads_from"] == "generation_config.alignment_heads"
    for w in doc["words"]:
        assert w["start_s"] == doc["tokens"][w["tokens"][0] - 1]["end_s"] and w["end_s"] == doc["tokens"][w["tokens"][-1]]["end_s"]
    # --heads changes the heads the timestamps come from, exactly as generate does with them
    model.generation_config.alignment_heads = [[0, 2]]
    with torch.no_grad():
        ref2 = model.generate(batch["input_features"], attention_mask=batch["attention_mask"],
                              return_token_timestamps=True, return_dict_in_generate=True)
    doc2 = run_json(clip, "-m", folder, "--heads", "0:2", "--out", tmp_path / "o2")
    assert doc2["alignment_heads"] == [[0, 2]] and doc2["alignment_heads_from"] == "--heads"
    ends2 = np.array([t["end_s"] for t in doc2["tokens"]])
    assert np.abs(ends2 - ref2["token_timestamps"][0].numpy()).max() <= 0.02 + 1e-6


def test_multilingual_whisper_prompt_and_timestamps(tmp_path, clip):
    """A multilingual model detects the language in a first decoder call of its own: the prompt is still
    <|startoftranscript|><|en|>...<|notimestamps|>, and the token times are still generate's."""
    folder = A.make_whisper(tmp_path, multilingual=True)
    model, batch = model_inputs(folder, clip)
    for extra in ([], ["--language", "en"]):
        kwargs = {"language": "en"} if extra else {}
        with torch.no_grad():
            ref = model.generate(batch["input_features"], attention_mask=batch["attention_mask"],
                                 return_token_timestamps=True, return_dict_in_generate=True, **kwargs)
        doc = run_json(clip, "-m", folder, *extra, "--out", tmp_path / "o")
        ids = ref["sequences"][0].tolist()
        assert [t["id"] for t in doc["tokens"]] == ids
        prompt = ids.index(A.whisper_tokenizer(tmp_path).convert_tokens_to_ids("<|notimestamps|>")) + 1
        assert [t["prompt"] for t in doc["tokens"]] == [i < prompt for i in range(len(ids))]
        assert all(t["special"] for t in doc["tokens"][:prompt])
        ends = np.array([t["end_s"] for t in doc["tokens"]])
        assert np.abs(ends - ref["token_timestamps"][0].numpy()).max() <= 0.02 + 1e-6


def test_alignment_heads_ranking(models, tmp_path):
    folder = models("whisper")
    clips = tmp_path / "clips"
    clips.mkdir()
    A.write_clip(clips / "a.wav", 1.0)
    A.write_clip(clips / "b.flac", 2.0, 22050, fmt="FLAC")
    doc = run_json(clips, "-m", folder, "--find-heads", "--out", tmp_path / "o")
    ranking = doc["head_ranking"]
    assert len(ranking) == 2 * 4 and len(doc["clips"]) == 2
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True)
    for r in ranking:
        assert r["score"] == pytest.approx(r["monotonic"] * r["focus"] * r["on_audio"], abs=2e-6)
        assert 0 <= r["score"] <= 1
    assert [Path(f).name for f in doc["files"]] == ["heads.png"]


def test_head_scores_rank_a_diagonal_head_first():
    """A head that walks along the clip frame by frame scores 1 on monotonic and focus; a flat one scores low."""
    from attnviz.analysis.alignment import head_scores, rank_heads

    T, F, P = 12, 40, 2
    cross = np.full((1, 2, T, F), 1.0 / F)
    for t in range(T):
        cross[0, 0, t] = 0.0
        cross[0, 0, t, min(F - 1, 3 * t)] = 1.0
    ranked = rank_heads([head_scores(cross, P, F)])
    assert (ranked[0].layer, ranked[0].head) == (0, 0)
    assert ranked[0].monotonic == pytest.approx(1.0) and ranked[0].focus == pytest.approx(1.0)
    assert ranked[1].score < 0.3


# ---------------------------------------------------------------------------
# audio in


def test_stereo_44k_is_mixed_to_mono_and_resampled(models, tmp_path):
    import soundfile as sf
    import soxr

    from attnviz.inputs.audiofile import prepare_audio, read_audio

    path = A.write_clip(tmp_path / "s.flac", 2.0, 44100, channels=2, fmt="FLAC")
    audio = prepare_audio(read_audio(path), 16000, 30.0)
    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    expect = soxr.resample(data.mean(1), 44100, 16000, quality="HQ")
    assert audio.samples.shape == expect.shape == (32000,)
    assert np.abs(audio.samples - expect).max() <= 1e-6
    assert audio.channels == 2 and audio.source_rate == 44100 and audio.resampled
    doc = run_json(path, "-m", models("wav2vec2"), "--out", tmp_path / "o")
    assert (doc["sample_rate"], doc["source_sample_rate"], doc["channels"]) == (16000, 44100, 2)
    assert doc["duration_s"] == pytest.approx(2.0)


@pytest.mark.parametrize("fmt,suffix", [("FLAC", ".flac"), ("OGG", ".ogg"), ("MP3", ".mp3")])
def test_compressed_formats_are_read(fmt, suffix, tmp_path):
    import soundfile as sf

    from attnviz.inputs.audiofile import read_audio

    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {fmt}")
    path = A.write_clip(tmp_path / f"c{suffix}", 1.0, 22050, channels=2, fmt=fmt)
    raw = read_audio(path)
    assert raw.rate == 22050 and raw.channels == 2
    assert abs(raw.duration_s - 1.0) < 0.08  # MP3 adds encoder padding
    ref = A.tone(1.0, 22050, 2)
    n = min(len(ref), raw.samples.shape[0])
    if fmt == "FLAC":  # lossless (16-bit)
        assert np.abs(raw.samples[:n] - ref[:n]).max() < 1e-4


def test_long_clip_is_cut_to_the_window_with_a_notice(models, tmp_path):
    path = A.write_clip(tmp_path / "long.wav", 6.0)
    result = invoke(path, "-m", models("whisper"), "--out", tmp_path / "o", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["duration_s"] == pytest.approx(4.0) and doc["cut_s"] == pytest.approx(2.0)
    assert doc["original_duration_s"] == pytest.approx(6.0)
    assert any("2.00 s cut from the end" in n for n in doc["notes"])
    assert "2.00 s cut from the end" in result.stderr


def test_channels_that_cancel_out_are_warned_about(models, tmp_path):
    import soundfile as sf

    left = A.tone(1.0)[:, 0]
    path = tmp_path / "anti.wav"
    sf.write(str(path), np.stack([left, -left], 1), 16000)
    result = invoke(path, "-m", models("hubert"), "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "channels cancel out when mixed to mono" in result.stderr


def test_only_the_window_is_decoded(tmp_path):
    from attnviz.inputs.audiofile import prepare_audio, read_audio

    path = A.write_clip(tmp_path / "long.flac", 12.0, fmt="FLAC")
    raw = read_audio(path, max_seconds=4.0)
    assert raw.samples.shape[0] == 5 * 16000 and raw.duration_s == pytest.approx(12.0)
    audio = prepare_audio(raw, 16000, 4.0)
    assert audio.duration_s == pytest.approx(4.0) and audio.cut_s == pytest.approx(8.0)


def test_standard_input(models, clip, tmp_path):
    result = invoke("-", "-m", models("hubert"), "--out", tmp_path / "o", "--json", input=clip.read_bytes())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["audio"] == "standard input"




def test_bad_input_is_one_line_and_writes_nothing(models, clip, tmp_path):
    from tiny import make_text_model

    out = tmp_path / "o"
    w = models("whisper")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    assert "not an audio file libsndfile can read" in one_error_line(invoke(bad, "-m", w, "--out", out), 4)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    assert "is empty" in one_error_line(invoke(empty, "-m", w, "--out", out), 4)
    assert "does not exist" in one_error_line(invoke(tmp_path / "missing.wav", "-m", w, "--out", out), 4)
    assert "is a folder" in one_error_line(invoke(tmp_path, "-m", w, "--out", out), 4)
    assert "holds no audio samples" in one_error_line(invoke(_no_samples(tmp_path), "-m", w, "--out", out), 4)
    assert "--layer 5 is out of range: the encoder has 2 layers" in one_error_line(invoke(clip, "-m", w, "--layer", "5", "--out", out), 2)
    assert "--heads 9:0 is out of range" in one_error_line(invoke(clip, "-m", w, "--heads", "9:0", "--out", out), 2)
    assert "--heads must be LAYER:HEAD" in one_error_line(invoke(clip, "-m", w, "--heads", "x", "--out", out), 2)
    for option in (["--language", "en"], ["--max-new-tokens", "5"], ["--views", "spectrogram,words"], ["--find-heads"]):
        line = one_error_line(invoke(clip, "-m", models("wav2vec2"), *option, "--out", out), 2)
        assert "is for Whisper's decoder" in line and option[0] in line
    line = one_error_line(invoke(clip, "-m", w, "--size", "2x1.5", "--views", "encoder", "--out", out), 2)
    assert "too small for the encoder view's 5 panels" in line
    one_error_line(invoke(clip, "-m", w, "--language", "fr", "--out", out), 2)  # an English-only model
    text = make_text_model(tmp_path / "text", "bert")
    assert "attnviz text" in one_error_line(invoke(clip, "-m", text, "--out", out), 3)
    assert not out.exists()
    # the other way round: a speech model given to attnviz text names attnviz audio
    result = runner.invoke(app, ["text", "hello", "-m", str(w), "--out", str(out)])
    assert result.exit_code == 3 and "attnviz audio" in result.stderr


def _no_samples(tmp_path):
    import soundfile as sf

    path = tmp_path / "zero.wav"
    sf.write(str(path), np.zeros((0, 1), dtype=np.float32), 16000)
    return path


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2"])
def test_weights_holding_nan_are_refused_naming_the_tensor(kind, clip, tmp_path):
    """The NaN/infinity screen runs after the forward pass (where it costs no memory) but before anything is written."""
    import shutil

    import transformers as T

    folder = tmp_path / kind
    src = A.make_whisper(tmp_path / "src") if kind == "whisper" else A.make_encoder(tmp_path / "src", kind)
    shutil.copytree(src, folder)
    cls = T.WhisperForConditionalGeneration if kind == "whisper" else T.Wav2Vec2ForCTC
    model = cls.from_pretrained(src)
    attention = (model.model.encoder.layers[0].self_attn if kind == "whisper"
                 else model.wav2vec2.encoder.layers[0].attention)
    with torch.no_grad():
        attention.k_proj.weight[0, 0] = float("nan")
    model.save_pretrained(folder)
    line = one_error_line(invoke(clip, "-m", folder, "--out", tmp_path / "o"), 3)
    assert "k_proj.weight holds NaN values" in line and "encoder.layers.0" in line
    assert not (tmp_path / "o").exists()


def test_unsupported_speech_model_is_refused(tmp_path, clip):
    import transformers as T

    cfg = T.SEWConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                      conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4), num_conv_pos_embeddings=16,
                      num_conv_pos_embedding_groups=2)
    T.SEWModel(cfg).save_pretrained(tmp_path / "sew")
    T.Wav2Vec2FeatureExtractor().save_pretrained(tmp_path / "sew")
    line = one_error_line(invoke(clip, "-m", tmp_path / "sew", "--out", tmp_path / "o"), 3)
    assert "(sew) is a speech model attnviz audio cannot show yet" in line


# ---------------------------------------------------------------------------
# views and the page


def test_views_and_page(models, clip, tmp_path):
    from PIL import Image

    out = tmp_path / "o"
    doc = run_json(clip, "-m", models("whisper"), "--out", out, "--format", "png,html", "--size", "column")
    names = sorted(Path(f).name for f in doc["files"])
    assert names == ["alignment.png", "encoder-layer1.png", "report.html", "spectrogram.png", "words.png"]
    for name in names[:-1] if names[-1] == "report.html" else names:
        if name.endswith(".png"):
            assert Image.open(out / name).size[0] == pytest.approx(3.3 * 300, abs=2)  # column width (3.3 in) at 300 dpi
    page = (out / "report.html").read_text()
    assert "data:audio/wav;base64," in page and "media-src data:" in page
    data = json.loads(page.split('id="attnviz-data">', 1)[1].split("</script>", 1)[0])
    assert [w["text"] for w in data["words"]] == [w["text"] for w in doc["words"]]
    # each word's curve: the rows that write its tokens (position t - 1), alignment heads and tokens averaged
    run_json(clip, "-m", models("whisper"), "--out", tmp_path / "o2", "--format", "html", "--save-attn", tmp_path / "a.safetensors")
    saved, _ = load_saved(tmp_path / "a.safetensors")
    cross = saved["cross_attentions"]
    for w in data["words"]:
        rows = [t - 1 for t in w["tokens"]]
        expect = torch.stack([cross[l, h, rows, :doc["frames"]] for l, h in doc["alignment_heads"]]).mean((0, 1))
        assert np.allclose(w["curve"], expect.numpy(), atol=1e-5)


def test_views_option_picks_the_figures_and_skips_the_encoder_map(models, clip, tmp_path):
    doc = run_json(clip, "-m", models("whisper"), "--views", "words,alignment", "--out", tmp_path / "o")
    assert [Path(f).name for f in doc["files"]] == ["alignment.png", "words.png"]
    doc = run_json(clip, "-m", models("hubert"), "--views", "encoder", "--layer", "0", "--out", tmp_path / "o2")
    assert [Path(f).name for f in doc["files"]] == ["encoder-layer0.png"]
    line = one_error_line(invoke(clip, "-m", models("hubert"), "--views", "words", "--out", tmp_path / "o3"), 2)
    assert "is for Whisper's decoder" in line
    assert "unknown view 'nope'" in one_error_line(invoke(clip, "-m", models("hubert"), "--views", "nope", "--out", tmp_path / "o3"), 2)


def test_figures_have_no_overlapping_or_clipped_text():
    from attnviz.render import audio as views
    from attnviz.render.layout import Style, overlapping_texts, texts_outside

    samples = A.tone(1.5)[:, 0]
    words = [type("W", (), {"text": t, "start_s": s, "end_s": e})() for t, s, e in
             (("Hello", 0.0, 0.4), ("world!", 0.4, 1.2), ("and", 1.2, 1.25), ("more", 1.25, 1.3), ("words", 1.3, 1.35),
              ("crowded", 1.35, 1.4), ("together", 1.4, 1.45), ("here", 1.45, 1.5))]
    from attnviz.errors import UsageError

    def draw_all(style):
        yield lambda: views.spectrogram_view(samples, 16000, words=words, title="t: clip", subtitle="1.50 s", style=style)
        yield lambda: views.alignment_view(np.random.default_rng(0).random((6, 75)) / 75, 0.02, list("abcdef"),
                                           ends=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], title="t", subtitle="s", style=style)
        yield lambda: views.encoder_view(np.random.default_rng(0).random((5, 75, 75)) / 75, 0.02,
                                         names=["head 0", "head 1", "head 2", "head 3", "mean"], title="t", subtitle="s",
                                         style=style)
        yield lambda: views.heads_view(np.random.default_rng(0).random((4, 6)), [(3, 0)], title="t", subtitle="s",
                                       style=style)

    for size in ("column", "page", "screen", "5x4", "4x3", "7x2"):
        style = Style.from_options(size=size)
        for draw in draw_all(style):
            try:
                fig = draw()
            except UsageError as exc:  # a fixed size too short for a view is refused in one line, never clipped
                assert size in ("4x3", "7x2") and "too s" in str(exc), (size, exc)
                continue
            assert not overlapping_texts(fig), (size, overlapping_texts(fig))
            assert not texts_outside(fig), (size, texts_outside(fig))


# ---------------------------------------------------------------------------
# the real Whisper tiny.en on real speech (8 kHz clips: resampled)


@needs_shared
def test_real_whisper_words_and_timestamps(tmp_path):
    path = SPEECH / "demo-thanks.wav"
    doc = run_json(path, "-m", WHISPER_EN, "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    assert doc["text"].strip() == "Goodbye. Thank you for trying out the asterisk open-source PBX."
    assert doc["source_sample_rate"] == 8000 and doc["sample_rate"] == 16000
    assert [w["text"] for w in doc["words"]][:4] == ["Goodbye.", "Thank", "you", "for"]
    assert doc["alignment_heads"] == [[1, 0], [2, 0], [2, 5], [3, 0], [3, 1], [3, 2], [3, 3], [3, 4]]
    model, batch = model_inputs(WHISPER_EN, path)
    with torch.no_grad():
        ref = model.generate(batch["input_features"], attention_mask=batch["attention_mask"],
                             return_token_timestamps=True, return_dict_in_generate=True)
    ends = np.array([t["end_s"] for t in doc["tokens"]])
    assert np.abs(ends - ref["token_timestamps"][0].numpy()).max() <= 0.02 + 1e-6
    starts = [w["start_s"] for w in doc["words"]]
    assert starts == sorted(starts) and 1.4 <= doc["words"][1]["start_s"] <= 1.7  # "Thank" after the pause
    saved, meta = load_saved(tmp_path / "a.safetensors")
    ids = torch.tensor(json.loads(meta["input_ids"]))[None]
    with torch.no_grad():
        out = model(input_features=batch["input_features"], decoder_input_ids=ids, output_attentions=True)
    close(saved["cross_attentions"], torch.stack(out.cross_attentions)[:, 0])
    close(saved["encoder_attentions"], torch.stack(out.encoder_attentions)[:, 0])


@needs_shared
def test_special_tokens_and_languages_of_the_real_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from attnviz.analysis.alignment import words
    from attnviz.pipelines.audio import spoken_language

    doc = run_json(SPEECH / "hello-world.wav", "-m", WHISPER_EN, "--views", "words", "--out", tmp_path / "o")
    assert [t["special"] for t in doc["tokens"]] == [True, True, False, False, False, True]  # sot, notimestamps ... eot
    assert spoken_language("zh", []) == "chinese" and spoken_language("Chinese", []) == "chinese"
    assert spoken_language(None, ["<|startoftranscript|>", "<|ja|>", "<|transcribe|>"]) == "japanese"
    assert spoken_language(None, ["<|startoftranscript|>", "<|notimestamps|>"]) is None
    tok = AutoTokenizer.from_pretrained(WHISPER_EN)
    ids = tok("你好世界，我们走吧。", add_special_tokens=False).input_ids
    times = np.linspace(0, 1, len(ids) + 1)
    assert len(words(tok, [0] + ids, times, 1, "chinese")) > len(words(tok, [0] + ids, times, 1, None)) == 1


@needs_shared
def test_real_whisper_find_heads_on_the_speech_clips(tmp_path):
    doc = run_json(SPEECH, "-m", WHISPER_EN, "--find-heads", "--out", tmp_path / "o")
    assert len(doc["clips"]) == 3 and doc["clips"][0]["text"].strip().startswith("Asterisk is an open source")
    top = doc["head_ranking"][0]
    assert top["monotonic"] > 0.95 and top["on_audio"] > 0.8


@needs_shared
def test_html_report_hover_a_word_shows_its_attention(tmp_path):
    from browser import start, why_no_browser

    reason = why_no_browser()
    if reason:
        pytest.skip(reason)
    doc = run_json(SPEECH / "hello-world.wav", "-m", WHISPER_EN, "--format", "html", "--out", tmp_path / "o")
    driver = start()
    try:
        driver.get((tmp_path / "o" / "report.html").as_uri())
        state = driver.execute_script("return window.attnviz.state()")
        assert state == {"selected": 0, "words": len(doc["words"])}
        words = driver.find_elements("css selector", "span.word")
        assert [w.text for w in words] == [w["text"] for w in doc["words"]]
        driver.execute_script("document.querySelectorAll('span.word')[1]"
                              ".dispatchEvent(new MouseEvent('mouseenter', {bubbles: true}))")
        assert driver.execute_script("return window.attnviz.state()")["selected"] == 1
        assert doc["words"][1]["text"] in driver.find_element("id", "caption").text
        assert driver.find_element("id", "clip").get_attribute("src").startswith("data:audio/wav;base64,")
        assert driver.execute_script("return document.getElementById('clip').duration") == pytest.approx(doc["duration_s"], abs=0.05)
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2", "wavlm"])
def test_check_learns_speech_models(kind, models):
    from attnviz.pipelines.check import CheckRequest, run

    report = run(CheckRequest(str(models(kind))))
    assert report.exact and report.exit_code == 0 and report.modality.startswith("audio")
    kinds = {r.kind for r in report.rows}
    expected = {"whisper": {"encoder", "decoder", "cross"}, "wav2vec2": {"encoder"}, "wavlm": {"encoder mean"}}[kind]
    assert kinds == expected
    assert report.proven == (kind != "wavlm")
    assert all(r.max_abs_diff <= TOL for r in report.rows)


def test_missing_attention_weights_are_refused_or_labelled(models, clip, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(models("hubert"), folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "layers.0.attention.q_proj" not in k}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    line = one_error_line(invoke(clip, "-m", folder, "--out", tmp_path / "o"), 3)
    assert "lacks 2 tensors the attention depends on" in line and not (tmp_path / "o").exists()
    result = invoke(clip, "-m", folder, "--out", tmp_path / "o", "--random-weights-ok", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["random_weights"].startswith("random weights: 2 tensors")
    assert "random weights" in result.stderr


def test_maps_that_are_not_probabilities_of_the_input_are_refused(models, clip):
    """The check every capture passes before anything is drawn, saved or called exact: a band of keys, a
    cross-attention of another length, rows that do not sum to 1 and a wrong decoder map are each refused."""
    from attnviz.errors import AttentionRefused
    from attnviz.inputs.audiofile import prepare_audio, read_audio
    from attnviz.inputs.speech import _check_maps, capture_speech, features, load_speech_model, transcribe

    sm = load_speech_model(str(models("whisper")))
    feats = features(sm, prepare_audio(read_audio(clip), sm.rate, sm.max_seconds).samples)
    tr = transcribe(sm, feats)
    att = capture_speech(sm, feats, tr, {1}, everything=True)
    T = int(tr.ids.shape[-1])
    _check_maps(sm, att, feats, T)  # the real capture passes
    from dataclasses import replace

    bad = [
        ("encoder layer 1", replace(att, encoder={1: att.encoder[1][..., :9]})),  # a band of 9 keys, not [F, F]
        ("cross-attention", replace(att, cross=att.cross[:, :, :-1])),  # another number of decoder positions
        ("cross-attention", replace(att, cross=att.cross * 0.5)),  # rows summing to 0.5
        ("decoder self-attention", replace(att, decoder=att.decoder[..., :-1])),
    ]
    for what, broken in bad:
        with pytest.raises(AttentionRefused, match=what):
            _check_maps(sm, broken, feats, T)
