"""Speech models: feature extractor, frames in seconds, transcription, and exact attention capture.

- Whisper (encoder-decoder, Radford et al. 2022): the feature extractor's log-mel spectrogram (10 ms hop, padded to
  its 30 s window), greedy transcription with ``model.generate``, then one forward pass over the prompt + generated
  ids whose attention attnviz's capture keeps: the cross-attention of every decoder position over the encoder frames
  (``[L, H, T, F]``, 20 ms a frame) and the encoder's self-attention for the layers a view needs.
- Encoder-only models (wav2vec2, HuBERT, WavLM, Data2VecAudio, UniSpeech, UniSpeech-SAT): the raw waveform through
  the convolutional feature encoder (one frame every ``prod(conv_stride)`` samples: 20 ms at 16 kHz), then
  self-attention over frames. WavLM computes its attention with ``torch.nn.functional.multi_head_attention_forward``
  and a gated relative position bias, and its ``output_attentions`` are the *mean over heads* repeated for every head
  (transformers' own comment, pytorch#32590); attnviz recomputes each head's probabilities from the module's query
  and key projections and the gated bias, and checks every call: the head mean equals what the module returned and
  ``out_proj(P @ V)`` equals the module's output (:func:`_wavlm_hooks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from attnviz.errors import AttentionRefused, ModelError, UsageError
from attnviz.models import LoadOptions, ModelSource, check_weight_files, load_config, load_model_for_capture, resolve_model

WHISPER = "whisper"
#: Encoder-only speech models whose frame self-attention attnviz shows exactly (tests/audio_tiny.py).
ENCODER_TYPES = frozenset({"wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat"})
SUPPORTED = ENCODER_TYPES | {WHISPER}
#: Longest clip an encoder-only model is shown on (seconds): 3,000 frames, one layer's [H, F, F] = H x 36 MB.
MAX_ENCODER_SECONDS = 60.0
#: Tolerance of the WavLM run-time check in float32; half precision: :data:`WAVLM_HALF_TOL`.
WAVLM_TOL = 1e-4
WAVLM_HALF_TOL = 5e-2


def wavlm_tolerance(dtype) -> float:
    """The WavLM run-time check's tolerance for a model of ``dtype`` (a torch dtype)."""
    return WAVLM_TOL if dtype.is_floating_point and dtype.itemsize >= 4 else WAVLM_HALF_TOL


@dataclass(frozen=True)
class SpeechModel:
    """A speech model with its feature extractor (and tokenizer, where it writes text).

    ``seq2seq``: Whisper (transcribes; cross-attention); ``ctc``: an encoder with a CTC head (its greedy transcript is
    shown); ``model`` is None until :meth:`with_weights`.
    """

    source: ModelSource
    config: Any
    feature_extractor: Any
    tokenizer: Any
    seq2seq: bool
    ctc: bool
    model: Any = None
    options: LoadOptions = LoadOptions()

    @property
    def model_type(self) -> str:
        return str(self.config.model_type)

    @property
    def rate(self) -> int:
        """The sampling rate the feature extractor takes (Hz)."""
        return int(self.feature_extractor.sampling_rate)

    @property
    def max_seconds(self) -> float:
        """The longest stretch of audio shown: Whisper's window (``chunk_length``, 30 s), else :data:`MAX_ENCODER_SECONDS`."""
        if self.seq2seq:
            return float(self.feature_extractor.n_samples) / self.rate
        return MAX_ENCODER_SECONDS

    @property
    def frame_samples(self) -> int:
        """Samples per encoder frame: Whisper: 2 x the mel hop (its conv stride 2); else ``prod(conv_stride)``."""
        if self.seq2seq:
            return 2 * int(self.feature_extractor.hop_length)
        return int(np.prod(self.config.conv_stride))

    @property
    def frame_s(self) -> float:
        """Seconds per encoder frame (0.02 for Whisper and wav2vec2-style models at 16 kHz)."""
        return self.frame_samples / self.rate

    @property
    def receptive_samples(self) -> int:
        """Samples one encoder frame sees: wav2vec2-style, through the convolutional feature encoder (400 = 25 ms);
        Whisper, through its two kernel-3 convolutions (strides 1 and 2) over mel frames (5 mel frames: 4 hops plus
        one ``n_fft`` window, 1,040 samples = 65 ms)."""
        if self.seq2seq:
            fe = self.feature_extractor
            return 4 * int(fe.hop_length) + int(getattr(fe, "n_fft", 2 * fe.hop_length))
        r, jump = 1, 1
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            r += (int(k) - 1) * jump
            jump *= int(s)
        return r

    def with_weights(self) -> "SpeechModel":
        """This model with its weights (Whisper: ``AutoModelForSpeechSeq2Seq``; a CTC checkpoint: ``AutoModelForCTC``;
        else ``AutoModel``).

        The weights' NaN/infinity screen (:func:`attnviz.models.check_finite`) is the caller's, after the first
        forward pass: run before it, it pages the whole checkpoint in ahead of the activations (+340 MB peak on a
        wav2vec2-base-sized model and a 30 s clip, benchmarks/AUDIO.md); after it, it costs nothing.

        Raises:
            ModelError: weights missing, incomplete or unloadable (:func:`attnviz.models.load_model`).
        """
        if self.model is not None:
            return self
        from transformers import AutoModel, AutoModelForCTC, AutoModelForSpeechSeq2Seq

        auto = AutoModelForSpeechSeq2Seq if self.seq2seq else AutoModelForCTC if self.ctc else AutoModel
        model = load_model_for_capture(self.source, auto, self.options, finite_check=False)  # after the forward
        ctc = self.ctc and not getattr(model, "attnviz_new_head", ())
        return replace(self, model=model, ctc=ctc)


def load_speech_model(name: str, options: LoadOptions = LoadOptions(), *, weights: bool = True) -> SpeechModel:
    """Load a speech Transformer's config, feature extractor and tokenizer (and weights unless ``weights=False``).

    Raises:
        ModelError: (exit 3) not a speech model (names the command that takes it), a speech architecture attnviz
        does not show yet, no feature extractor, Whisper without a tokenizer, weights unloadable.
    """
    from transformers import AutoFeatureExtractor

    from attnviz.inputs import AUDIO, require_modality

    source = resolve_model(name)
    config = load_config(source, options)
    require_modality(config, name, AUDIO, command="audio")
    mt = str(config.model_type)
    if mt not in SUPPORTED:
        raise ModelError(f"'{name}' ({mt}) is a speech model attnviz audio cannot show yet (supported: Whisper, "
                         "wav2vec2, HuBERT, WavLM, Data2VecAudio, UniSpeech, UniSpeech-SAT)")
    try:
        fe = AutoFeatureExtractor.from_pretrained(source.location, trust_remote_code=options.trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load a feature extractor for '{name}' (it needs a preprocessor_config.json): {first}") from exc
    seq2seq = mt == WHISPER
    tokenizer = _tokenizer(source, options, required=seq2seq, name=name)
    archs = " ".join(getattr(config, "architectures", None) or ())
    ctc = "ForCTC" in archs and tokenizer is not None
    check_weight_files(source, options)
    sm = SpeechModel(source, config, fe, tokenizer, seq2seq, ctc, None, options)
    return sm.with_weights() if weights else sm


def _tokenizer(source: ModelSource, options: LoadOptions, required: bool, name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.location, trust_remote_code=options.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any failure means "no tokenizer"
        if required:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load the tokenizer of '{name}' (Whisper needs one to write its transcript): {first}") from exc
        return None


# ---------------------------------------------------------------------------
# features


@dataclass(frozen=True)
class Features:
    """Model inputs of one clip and their time grid.

    ``inputs``: what the model takes (Whisper: ``input_features [1, mels, 2F]`` and ``attention_mask``; else
    ``input_values [1, samples]``); ``frames``: encoder frames the model computes (Whisper: 1,500 for 30 s, padding
    included); ``audio_frames``: frames that hold the clip (the rest is Whisper's padding); ``frame_s``: seconds per
    frame; ``mel``: the log-mel spectrogram ``[mels, mel frames]`` of the clip (Whisper's own features; None for
    waveform models); ``mel_frames``: mel frames (10 ms) of the clip (transformers' ``num_frames``).
    """

    inputs: dict
    frames: int
    audio_frames: int
    frame_s: float
    mel: np.ndarray | None
    mel_frames: int


def features(sm: SpeechModel, samples: np.ndarray) -> Features:
    """Run the feature extractor on float32 mono ``samples`` at ``sm.rate`` Hz.

    Raises:
        ModelError: the feature extractor fails.
    """
    import torch

    try:
        if sm.seq2seq:
            batch = sm.feature_extractor(samples, sampling_rate=sm.rate, return_tensors="pt", return_attention_mask=True)
        else:
            batch = sm.feature_extractor(samples, sampling_rate=sm.rate, return_tensors="pt")
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"the feature extractor of '{sm.source.model_id}' failed: {' '.join(str(exc).split())[:200]}") from exc
    dtype = next(sm.model.parameters()).dtype if sm.model is not None else torch.float32
    if sm.seq2seq:
        feats = batch["input_features"].to(dtype)
        mask = batch["attention_mask"]
        mel_frames = int(mask.sum())
        frames = int(feats.shape[-1]) // 2
        audio_frames = min(frames, max(1, mel_frames // 2))  # as transformers crops before DTW (num_frames // 2)
        mel = batch["input_features"][0, :, :mel_frames].float().numpy()
        return Features({"input_features": feats, "attention_mask": mask}, frames, audio_frames, sm.frame_s, mel, mel_frames)
    values = batch["input_values"].to(dtype)
    n = int(values.shape[-1])
    if n < sm.receptive_samples:
        from attnviz.errors import InputError

        raise InputError(f"the clip is {n / sm.rate * 1000:.2g} ms long ({n} samples); {sm.source.model_id} needs at least "
                         f"{sm.receptive_samples / sm.rate * 1000:.3g} ms for one frame")
    frames = int(sm.model._get_feat_extract_output_lengths(torch.tensor(n))) if sm.model is not None else n // sm.frame_samples
    return Features({"input_values": values}, frames, frames, sm.frame_s, None, 0)


# ---------------------------------------------------------------------------
# Whisper: transcription


@dataclass(frozen=True)
class Transcript:
    """Greedy ``generate`` output: ``ids`` int64 ``[T]`` (decoder prompt + generated tokens, end-of-text included);
    ``prompt_length``: the decoder prompt's tokens (start of transcript, language, task, no-timestamps)."""

    ids: Any
    prompt_length: int


def transcribe(sm: SpeechModel, feats: Features, language: str | None = None, task: str | None = None,
               max_new_tokens: int | None = None, encoded: "Encoded | None" = None) -> Transcript:
    """Greedy transcription with ``model.generate`` (no beam search, no sampling, no temperature fallback); with
    ``encoded`` (:func:`encode`), on that encoder output instead of running the encoder again.

    Raises:
        UsageError: ``--language``/``--task`` the model does not take (e.g. a language for an English-only model).
    """
    import torch

    model = sm.model
    decoder = model.get_decoder()
    seen: list[int] = []

    def first_call(_module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if not seen and ids is not None:
            seen.append(int(ids.shape[-1]))

    kwargs: dict[str, Any] = {"attention_mask": feats.inputs["attention_mask"].to(model.device), "return_dict_in_generate": True,
                              "do_sample": False, "num_beams": 1}
    if language is not None:
        kwargs["language"] = language
    if task is not None:
        kwargs["task"] = task
    if max_new_tokens is not None:
        kwargs["max_new_tokens"] = max_new_tokens
    handle = decoder.register_forward_pre_hook(first_call, with_kwargs=True)
    try:
        with torch.no_grad():
            if encoded is not None:
                out = model.generate(encoder_outputs=encoded.outputs, **kwargs)
            else:
                out = model.generate(feats.inputs["input_features"].to(model.device), **kwargs)
    except ValueError as exc:
        raise UsageError(" ".join(str(exc).split())) from None
    finally:
        handle.remove()
    ids = out["sequences"][0] if isinstance(out, dict) or hasattr(out, "sequences") else out[0]
    ids = ids.detach().cpu()
    return Transcript(ids, prompt_length(ids.tolist(), model.generation_config, seen[0] if seen else 1))


def prompt_length(ids: list[int], generation_config, first_call: int) -> int:
    """The decoder prompt's length in ``ids``: up to and including ``<|notimestamps|>`` (attnviz never asks for
    timestamp tokens, so Whisper's prompt -- start of transcript, language, task -- always ends with it). The first
    decoder call's length (``first_call``) is not enough: a multilingual model's first call detects the language from
    ``<|startoftranscript|>`` alone."""
    nt = getattr(generation_config, "no_timestamps_token_id", None)
    if nt is not None and int(nt) in ids[:6]:
        return ids.index(int(nt)) + 1
    return first_call


# ---------------------------------------------------------------------------
# capture


@dataclass
class SpeechAttention:
    """Captured attention probabilities (float32, CPU, 0-based layers and heads, as in transformers).

    ``encoder``: layer -> ``[H, F, F]`` frame self-attention for the layers kept; ``cross``: Whisper's
    ``[L, H, T, F]`` cross-attention of every decoder position over the encoder frames (None for encoder-only
    models); ``decoder``: Whisper's ``[L, H, T, T]`` decoder self-attention when kept (``--save-attn``);
    ``encoder_layers``/``heads``: the encoder's size; ``backend``: how it was captured; ``logits``: a CTC head's
    ``[F, vocab]`` output (None otherwise).
    """

    encoder: dict[int, Any]
    cross: Any
    decoder: Any
    encoder_layers: int
    heads: int
    backend: str
    logits: Any = None
    notes: list[str] = field(default_factory=list)
    #: WavLM: the largest differences its run-time check measured over every call (``"head mean"``: attnviz's head
    #: mean vs the module's returned weights; ``"output"``: ``out_proj(P @ V)`` vs the module's output); else empty.
    checked: dict = field(default_factory=dict)


@dataclass
class Encoded:
    """Whisper's encoder run once under attnviz's capture: ``maps`` (the encoder's
    :class:`~attnviz.types.AttentionMaps`, the layers a plan kept), ``outputs`` (its ``BaseModelOutput``, handed to
    ``generate`` and to the decoder's capture so the encoder never runs twice), ``backend``, ``notice``."""

    maps: Any
    outputs: Any
    backend: str
    notice: str | None = None


def encode(sm: SpeechModel, feats: Features, encoder_layers: set[int], everything: bool = False) -> Encoded:
    """Run Whisper's encoder on ``feats`` once, keeping the ``[H, F, F]`` maps of ``encoder_layers`` (every layer with
    ``everything``)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    from attnviz.capture import CapturePlan, capture

    model = sm.model
    plan = CapturePlan(full=True) if everything else CapturePlan(layers=frozenset(encoder_layers))
    with torch.no_grad():
        cap = capture(model.get_encoder(), {"input_features": feats.inputs["input_features"].to(model.device)}, plan)
    maps = cap.attention.get("encoder") or cap.attention.get("self")
    if maps is None or cap.outputs is None:
        raise AttentionRefused(f"'{sm.source.model_id}': no encoder attention was captured")
    return Encoded(maps, BaseModelOutput(last_hidden_state=cap.outputs.last_hidden_state), cap.backend, cap.notice)


def capture_speech(sm: SpeechModel, feats: Features, transcript: Transcript | None, encoder_layers: set[int],
                   everything: bool = False, encoded: Encoded | None = None) -> SpeechAttention:
    """Capture the attention the views need, each stack run once.

    ``encoder_layers``: encoder layers whose ``[H, F, F]`` maps to keep; ``everything``: keep every layer of every
    kind (``--save-attn``). Whisper: the encoder pass of :func:`encode` (``encoded``, or run here), then one decoder
    pass over ``transcript.ids`` on its output that keeps the cross-attention of every decoder position in every
    layer (and with ``everything`` the decoder self-attention).

    Raises:
        AttentionRefused: a capture that is not rows of probabilities over the frames, or a WavLM call whose
        recomputed probabilities do not give the module's own output.
    """
    import torch

    from attnviz.capture import CapturePlan, capture

    model = sm.model
    if sm.model_type == "wavlm":
        return _capture_wavlm(sm, feats, encoder_layers, everything)
    notes = []
    cross = decoder = logits = None
    if sm.seq2seq:
        encoded = encoded or encode(sm, feats, encoder_layers, everything)
        enc, backend = encoded.maps, encoded.backend
        notes += [encoded.notice] if encoded.notice else []
        ids = transcript.ids[None].to(model.device)
        T = int(ids.shape[-1])
        plan = CapturePlan(full=True) if everything else CapturePlan(cross_rows=tuple(range(T)))
        with torch.no_grad():
            cap = capture(model, {"encoder_outputs": encoded.outputs, "decoder_input_ids": ids}, plan)
        c = cap.attention["cross"]
        cross = c.full if c.full is not None else c.rows
        decoder = cap.attention["decoder"].full if everything else None
        backend = backend if cap.backend == backend else f"{backend} (encoder), {cap.backend} (decoder)"
    else:
        inputs = {k: v.to(model.device) for k, v in feats.inputs.items()}
        plan = CapturePlan(full=True) if everything else CapturePlan(layers=frozenset(encoder_layers))
        with torch.no_grad():
            cap = capture(model, inputs, plan)
        enc, backend = cap.attention.get("encoder") or cap.attention.get("self"), cap.backend
        if enc is None:
            raise AttentionRefused(f"'{sm.source.model_id}': no encoder attention was captured")
        if sm.ctc and cap.outputs is not None and getattr(cap.outputs, "logits", None) is not None:
            logits = cap.outputs.logits[0].float().cpu()
    notes += [cap.notice] if cap.notice else []
    kept = range(enc.num_layers) if everything else sorted(encoder_layers)
    encoder = {l: (enc.full[l] if enc.full is not None else enc.layers[l]) for l in kept}
    result = SpeechAttention(encoder, cross, decoder, enc.num_layers, enc.num_heads, backend, logits, notes)
    _check_maps(sm, result, feats, int(transcript.ids.shape[-1]) if transcript is not None else None)
    return result


def _check_maps(sm: SpeechModel, att: SpeechAttention, feats: Features, tokens: int | None = None) -> None:
    """Refuse anything that is not ``[query, key]`` probabilities of this input: encoder maps ``[H, F, F]`` over the
    ``F`` encoder frames, Whisper's cross-attention ``[L, H, T, F]`` and decoder self-attention ``[L, H, T, T]`` over
    the ``T = tokens`` decoder positions; finite, rows summing to 1 (1e-4; 1e-2 for a half-precision model).

    Raises:
        AttentionRefused: naming the map and what is wrong with it.
    """
    import torch

    F = feats.frames
    dtype = next(sm.model.parameters()).dtype
    tol = 1e-4 if dtype.itemsize >= 4 else 1e-2
    checks = [(f"encoder layer {l}", t, (att.heads, F, F)) for l, t in att.encoder.items()]
    if att.cross is not None:
        L, H = int(sm.config.decoder_layers), int(sm.config.decoder_attention_heads)
        checks.append(("cross-attention", att.cross, (L, H, tokens, F)))
        if att.decoder is not None:
            checks.append(("decoder self-attention", att.decoder, (L, H, tokens, tokens)))
    for what, t, shape in checks:
        if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
            raise AttentionRefused(f"'{sm.source.model_id}': {what} has shape {list(t.shape)}, not "
                                   f"{[s if s is not None else '?' for s in shape]} (keys: the {F} encoder frames or the "
                                   "decoder's tokens); refusing to show it")
        if not bool(torch.isfinite(t).all()):
            raise AttentionRefused(f"'{sm.source.model_id}': {what} holds NaN or infinite values")
        err = float((t.sum(-1) - 1).abs().max()) if t.numel() else 0.0
        if err > tol:
            raise AttentionRefused(f"'{sm.source.model_id}': rows of {what} sum to 1 +- {err:.2g}, not probabilities")


def _capture_wavlm(sm: SpeechModel, feats: Features, encoder_layers: set[int], everything: bool) -> SpeechAttention:
    import torch

    model = sm.model
    modules = [m for name, m in model.named_modules() if type(m).__name__ == "WavLMAttention"]
    keep = set(range(len(modules))) if everything else set(encoder_layers)
    found: dict[int, torch.Tensor] = {}
    errors: dict[str, float] = {"head mean": 0.0, "output": 0.0}
    handles = [m.register_forward_hook(_wavlm_hook(i, i in keep, found, sm.source.model_id, errors), with_kwargs=True)
               for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            out = model(**{k: v.to(model.device) for k, v in feats.inputs.items()})
    finally:
        for h in handles:
            h.remove()
    heads = int(modules[0].num_heads) if modules else 0
    logits = out.logits[0].float().cpu() if sm.ctc and getattr(out, "logits", None) is not None else None
    result = SpeechAttention({l: found[l] for l in sorted(keep) if l in found}, None, None, len(modules), heads,
                             "wavlm-recomputed", logits, checked=errors)
    _check_maps(sm, result, feats)
    return result


def wavlm_probabilities(module, hidden_states, attention_mask, position_bias):
    """Per-head attention probabilities of one ``WavLMAttention`` call, as ``multi_head_attention_forward`` computes
    them: ``softmax(q k^T / sqrt(d) + gated_bias [- inf on padded keys])``.

    Args:
        hidden_states: ``[B, T, D]`` the module's input; attention_mask: ``[B, T]`` (1 = frame) or None;
        position_bias: ``[B*H, T, T]`` the relative position bias the module used (its third output).

    Returns:
        float32 ``[B, H, T, T]`` probabilities and the module's output recomputed from them ``[B, T, D]``.
    """
    import torch
    import torch.nn.functional as F

    B, T, D = hidden_states.shape
    H = module.num_heads
    d = D // H
    h = hidden_states.float()
    gated = h.view(B, T, H, d).permute(0, 2, 1, 3)
    proj = F.linear(gated, module.gru_rel_pos_linear.weight.float(), module.gru_rel_pos_linear.bias.float())
    proj = proj.view(B, H, T, 2, 4).sum(-1)
    gate_a, gate_b = torch.sigmoid(proj).chunk(2, dim=-1)
    gate = gate_a * (gate_b * module.gru_rel_pos_const.float() - 1.0) + 2.0  # [B, H, T, 1]
    bias = gate * position_bias.float().view(B, H, T, T)
    q = F.linear(h, module.q_proj.weight.float(), module.q_proj.bias.float()).view(B, T, H, d).transpose(1, 2)
    k = F.linear(h, module.k_proj.weight.float(), module.k_proj.bias.float()).view(B, T, H, d).transpose(1, 2)
    v = F.linear(h, module.v_proj.weight.float(), module.v_proj.bias.float()).view(B, T, H, d).transpose(1, 2)
    scores = (q * (d ** -0.5)) @ k.transpose(-1, -2) + bias
    if attention_mask is not None:
        scores = scores.masked_fill(attention_mask.ne(1)[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    ctx = (probs @ v).transpose(1, 2).reshape(B, T, D)
    out = F.linear(ctx, module.out_proj.weight.float(), module.out_proj.bias.float())
    return probs, out


def _wavlm_hook(index: int, keep: bool, found: dict, model_id: str, errors: dict):
    def hook(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        probs, recomputed = wavlm_probabilities(module, hidden, mask, output[2])
        tol = wavlm_tolerance(hidden.dtype)
        out_err = float((recomputed - output[0].float()).abs().max())
        mean_err = float((probs.mean(1) - output[1][:, 0].float()).abs().max()) if output[1] is not None else 0.0
        errors["output"] = max(errors["output"], out_err)
        errors["head mean"] = max(errors["head mean"], mean_err)
        if out_err > tol or mean_err > tol:
            raise AttentionRefused(
                f"'{model_id}': WavLM layer {index}'s attention recomputed from its projections and gated position "
                f"bias differs from the module's own (output {out_err:.2g}, head mean {mean_err:.2g}); refusing to show it")
        if keep:
            found[index] = probs[0].cpu()

    return hook


# ---------------------------------------------------------------------------
# the reference: the model's own eager output_attentions


def eager_tensors(sm: SpeechModel, feats: Features, transcript: Transcript | None) -> dict:
    """The model's own eager ``output_attentions`` as float32 ``[L, H, Q, K]`` under the ``--save-attn`` names
    (``encoder_attentions``; Whisper also ``decoder_attentions`` and ``cross_attentions`` over ``transcript.ids``).
    WavLM's are the head mean repeated per head (see the module docstring). The model runs eager for the call.

    Raises:
        ModelError: the model cannot run eager attention.
    """
    import torch

    from attnviz.capture import eager_attention

    model = sm.model
    inputs = {k: v.to(model.device) for k, v in feats.inputs.items()}
    if sm.seq2seq:
        inputs = {"input_features": inputs["input_features"], "decoder_input_ids": transcript.ids[None].to(model.device)}
    with eager_attention(model), torch.inference_mode():
        out = model(**inputs, output_attentions=True)

    def stack(maps):
        return torch.stack([m[0].detach().float().cpu() for m in maps])

    if sm.seq2seq:
        return {"encoder_attentions": stack(out.encoder_attentions), "decoder_attentions": stack(out.decoder_attentions),
                "cross_attentions": stack(out.cross_attentions)}
    return {"encoder_attentions": stack(out.attentions)}


def compare_speech(sm: SpeechModel, feats: Features, transcript: Transcript | None) -> tuple[SpeechAttention, dict]:
    """attnviz's capture of every layer vs :func:`eager_tensors`: ``(capture, {name: (shape, max abs diff)})``.

    WavLM: the mean over heads of attnviz's per-head maps is compared (eager returns nothing finer); each head is
    checked inside the capture (the module's own output recomputed from them, :func:`wavlm_probabilities`).
    """
    import torch

    att = capture_speech(sm, feats, transcript, set(), everything=True)
    ref = eager_tensors(sm, feats, transcript)
    ours = {"encoder_attentions": torch.stack([att.encoder[l] for l in sorted(att.encoder)])}
    if att.cross is not None:
        ours["cross_attentions"] = att.cross
        ours["decoder_attentions"] = att.decoder
    diffs = {}
    for name, r in ref.items():
        o = ours.get(name)
        if sm.model_type == "wavlm":
            o, r = o.mean(1, keepdim=True), r[:, :1]
        diffs[name] = (tuple(ours[name].shape), float((o.float() - r).abs().max()) if o is not None and o.shape == r.shape else float("inf"))
    return att, diffs
