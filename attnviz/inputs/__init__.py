"""Input modules, one per modality, and the one table that says which kind of model takes which input.

- :mod:`attnviz.inputs.tokens` -- text: tokenizer, tokens and words (``attnviz text``, ``generate``, ``heads``)
- :mod:`attnviz.inputs.patches` -- images: image processor, patch grid, prefix tokens (``attnviz image``)
- :mod:`attnviz.inputs.imagefile` -- image files in, RGB pictures out
- :mod:`attnviz.inputs.detection` -- object detectors: image processor, feature levels, boxes, deformable sampling (``attnviz detect``)
- :mod:`attnviz.inputs.audiofile` -- audio files in, mono float32 at the model's rate out
- :mod:`attnviz.inputs.speech` -- speech models: feature extractor, frames in seconds, transcription, capture (``attnviz audio``)
- :mod:`attnviz.inputs.corpus` -- text corpora streamed from .txt/.jsonl/.csv/.parquet (``attnviz heads``)

:data:`MODALITIES` is the table every command, ``attnviz check`` and the run-time check consult
to tell a model's modality from its ``config.json`` (no transformers import: milliseconds), and to
refuse a model of the wrong kind in one line that names the command that really takes it (or says
that none does yet). Adding a modality = a new input module, a row here, a pipeline and its views.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from attnviz.errors import ModelError


@dataclass(frozen=True)
class Modality:
    """One kind of input: ``name`` (``"text"``, ``"image"``, ...), the ``command`` that shows such models
    (None: no attnviz command does yet), what a model of it is called in messages (``noun``), and the
    ``model_types`` (``config.model_type``) known to belong to it."""

    name: str
    command: str | None
    noun: str
    model_types: frozenset[str] = frozenset()


TEXT = Modality("text", "text", "text model")
IMAGE = Modality("image", "image", "vision model", frozenset({
    "vit", "deit", "dinov2", "dinov2_with_registers", "beit", "data2vec-vision", "ijepa", "clip_vision_model",
    "siglip_vision_model", "vit_mae", "vit_msn", "vit_hybrid", "swin", "swinv2", "convnext", "convnextv2", "resnet",
    "levit", "mobilevit", "mobilevitv2", "efficientnet", "regnet", "poolformer", "pvt", "pvt_v2", "segformer", "dpt",
    "hiera", "focalnet", "dinat", "nat", "cvt", "bit", "van", "mobilenet_v1", "mobilenet_v2", "efficientformer",
    "clip", "siglip",  # attnviz image shows their vision towers
}))
AUDIO = Modality("audio", "audio", "speech model", frozenset({
    "whisper", "wav2vec2", "wav2vec2-conformer", "wav2vec2-bert", "hubert", "wavlm", "data2vec-audio", "sew", "sew-d",
    "unispeech", "unispeech-sat", "speech_to_text", "speecht5", "seamless_m4t", "seamless_m4t_v2", "audio-spectrogram-transformer",
    "clap", "encodec", "mimi", "moonshine", "musicgen", "pop2piano", "univnet", "clvp", "mctct", "qwen2_audio", "dac",
}))
DETECTION = Modality("detection", "detect", "object-detection model", frozenset({
    "detr", "conditional_detr", "deformable_detr", "dab-detr", "yolos", "rt_detr", "rt_detr_v2", "d_fine",
    "table-transformer", "grounding-dino", "owlvit", "owlv2", "omdet-turbo", "mask2former", "maskformer", "oneformer",
}))
VISION_LANGUAGE = Modality("vision-language", "generate --image", "vision-language model", frozenset({
    "llava", "llava_next", "llava_onevision", "llava_next_video", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics",
    "idefics2", "idefics3", "smolvlm", "paligemma", "gemma3", "mllama", "blip", "blip-2", "instructblip", "kosmos-2",
    "fuyu", "pixtral", "aya_vision", "internvl", "janus", "chameleon", "florence2", "siglip2",
    "align", "altclip", "chinese_clip", "git", "pix2struct", "vilt", "visual_bert", "lxmert", "flava", "bridgetower",
}))
MULTIMODAL = Modality("multimodal", None, "multimodal Perceiver model", frozenset({"perceiver"}))

#: Every modality, in the order modality_of() tries them (text last: the default).
MODALITIES: tuple[Modality, ...] = (IMAGE, AUDIO, DETECTION, VISION_LANGUAGE, MULTIMODAL, TEXT)

#: Text architectures whose attention is not a dense ``[query, key]`` map of the input (sparse bands and blocks,
#: pooled or downsampled layers, landmark approximations): refused in one line until attnviz shows them exactly.
SPARSE_TEXT: Mapping[str, str] = {
    "big_bird": "block-sparse attention (window, global and random blocks; attnviz text shows it)",
    "bigbird_pegasus": "block-sparse attention (window, global and random blocks; attnviz text shows its encoder)",
    "longt5": "local / transient-global attention over blocks (attnviz text shows its encoder)",
    "funnel": "pooling that shortens the sequence from block to block",
    "canine": "downsampled character sequences between layers",
    "nystromformer": "a landmark (Nystrom) approximation of attention, never a [query, key] probability map",
    "reformer": "LSH-bucketed and chunked attention",
    "perceiver": "cross-attention onto a fixed latent array",
}


def config_document(location: str | Path) -> dict[str, Any] | None:
    """``config.json`` of a local model folder as a dict (None for a Hub id or an unreadable file)."""
    path = Path(location) / "config.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def modality_of(config: Any) -> Modality:
    """The modality of a model from its config (a ``PretrainedConfig`` or the ``config.json`` dict).

    Known ``model_type`` values decide; otherwise a ``vision_config`` with a ``text_config`` means a
    vision-language model, a ``vision_config`` alone (or an image-classifier architecture) a vision model,
    and everything else is text.
    """
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    model_type = str(get("model_type", "") or "")
    for modality in MODALITIES:
        if model_type in modality.model_types:
            return modality
    has_vision, has_text = get("vision_config") is not None, get("text_config") is not None
    if has_vision and has_text:
        return VISION_LANGUAGE
    if has_vision:
        return IMAGE
    archs = " ".join(get("architectures", None) or ())
    if "ForSpeechSeq2Seq" in archs or "ForCTC" in archs or "ForAudio" in archs:
        return AUDIO
    if "ForObjectDetection" in archs:
        return DETECTION
    return TEXT


def _wrong(name: str, model_type: str, found: Modality, wanted: Modality) -> ModelError:
    where = (f"use 'attnviz {found.command}'" if found.command is not None
             else f"no attnviz command shows {found.noun}s yet")
    return ModelError(f"'{name}' is a {found.noun} ({model_type or 'unknown type'}), not a {wanted.noun}: {where}")


def require_modality(config: Any, name: str, wanted: Modality, command: str | None = None) -> None:
    """Refuse, in one line, a model that is not of modality ``wanted`` (or a text model attnviz cannot show densely).

    ``config``: a ``PretrainedConfig`` or the ``config.json`` dict; ``name``: the model as the user typed it;
    ``command``: the command refusing (for the message), default ``wanted.command``.

    Raises:
        ModelError: (exit 3) a model of another modality, naming the command that takes it or saying none
        does yet; a text model in :data:`SPARSE_TEXT`.
    """
    found = modality_of(config)
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    model_type = str(get("model_type", "") or "")
    if found is not wanted:
        raise _wrong(name, model_type, found, wanted)
    if wanted is TEXT and model_type in SPARSE_TEXT:
        if model_type in ("big_bird", "bigbird_pegasus") and get("attention_type", "block_sparse") == "original_full":
            return
        if model_type == "nystromformer" and get("num_landmarks", 64) == get("segment_means_seq_len", 64):
            return  # no landmarks: plain softmax attention over every key, exact
        if model_type in ("longt5", "big_bird", "bigbird_pegasus") and (command or wanted.command) in ("text", "check"):
            return  # attnviz text shows its (encoder's) sparse layout (attnviz.pipelines.longdoc)
        raise ModelError(
            f"'{name}' ({model_type}) uses {SPARSE_TEXT[model_type]}, not a dense [query, key] map of the input; "
            f"attnviz {command or wanted.command} cannot show it exactly yet"
        )
