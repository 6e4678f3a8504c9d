"""``attnviz audio`` as a library call: a clip and a speech Transformer in; the transcript, its word timestamps from
cross-attention, and the attention over the clip's frames out.

::

    from attnviz.pipelines.audio import AudioRequest, run
    from attnviz.pipelines.common import ModelRequest, OutputRequest

    r = run(AudioRequest("speech.wav", model=ModelRequest("openai/whisper-tiny"), output=OutputRequest(out="figures")))
    r.text, r.words[1]   # ' Hello world!', Word(text='world!', tokens=(3, 4), start_s=0.0, end_s=1.4)
    r.to_json()          # what `attnviz audio ... --json` prints

The clip, the options and the output paths are checked before the weights load; every file is written together at the
end (:class:`attnviz.report.RunOutput`), or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError, UsageError
from attnviz.pipelines.common import (
    ModelRequest, OutputRequest, StyleRequest, mark_random_weights, notify, notify_left_alone, parse_views,
    quiet_libraries, verification_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.render.layout import Style

DEFAULT_AUDIO_MODEL = "openai/whisper-tiny"
#: The views ``attnviz audio`` can write (``--views``); ``alignment`` and ``words`` are Whisper's.
AUDIO_VIEWS = ("spectrogram", "encoder", "alignment", "words")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
#: Largest number of clips ``--find-heads`` reads from a folder.
MAX_CLIPS = 200


@dataclass(frozen=True)
class AudioRequest:
    """Everything ``attnviz audio`` takes (see ``attnviz audio --help`` and README "Audio").

    ``audio``: the clip (``"-"``: standard input), or with ``find_heads`` a folder of clips; ``language``/``task``:
    Whisper's (None: the model's default); ``max_new_tokens``: cap on generated tokens; ``layer``: encoder layer of
    ``encoder-layer{L}.png`` (0-based, negative from the end; default the last); ``heads``: ``"L:H,L:H"`` cross-
    attention heads for the word timestamps and ``alignment.png`` (default: the checkpoint's
    ``generation_config.alignment_heads``); ``find_heads``: rank every cross-attention head (``heads.png``);
    ``views``: comma-separated :data:`AUDIO_VIEWS` to draw (None: all that apply; without ``encoder`` no encoder map
    is kept).
    """

    audio: Path | str
    language: str | None = None
    task: str | None = None
    max_new_tokens: int | None = None
    layer: int | None = None
    heads: str | None = None
    find_heads: bool = False
    views: str | None = None
    model: ModelRequest = ModelRequest(DEFAULT_AUDIO_MODEL)
    output: OutputRequest = OutputRequest()
    style: StyleRequest = StyleRequest()


@dataclass(frozen=True)
class Clip:
    """One clip's result: ``name``, the :class:`~attnviz.inputs.audiofile.Audio`, transcript ``text``, ``tokens``
    (dicts: ``index``, ``id``, ``text``, ``start_s``, ``end_s``), ``words`` (:class:`~attnviz.analysis.alignment.Word`)."""

    name: str
    audio: Any
    text: str | None
    tokens: list[dict]
    words: list
    alignment: Any = None


@dataclass(frozen=True)
class AudioRun:
    """What one ``attnviz audio`` run produced; ``to_json()`` is ``--json``."""

    model_id: str
    model_type: str
    backend: str
    sample_rate: int
    frames: int
    audio_frames: int
    frame_s: float
    receptive_s: float
    encoder_layers: int
    heads_per_layer: int
    layer: int
    clips: list[Clip]
    alignment_heads: list[tuple[int, int]]
    alignment_source: str | None
    ranking: list
    files: tuple[Path, ...]
    save_attn: Path | None
    random_weights: str | None
    style: "Style"
    verification: Any = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    find_heads: bool = False

    @property
    def clip(self) -> Clip:
        return self.clips[0]

    @property
    def text(self) -> str | None:
        return self.clips[0].text

    @property
    def words(self) -> list:
        return self.clips[0].words

    def to_json(self) -> dict:
        """The ``--json`` document (plain JSON types only)."""
        from attnviz.render.layout import model_reference

        c = self.clips[0]
        a = c.audio
        doc = {
            "model": model_reference(self.model_id),
            "label": self.style.model_label(self.model_id),
            "model_type": self.model_type,
            "backend": self.backend,
            "random_weights": self.random_weights,
            **verification_json(self.verification),
            "audio": c.name,
            "sample_rate": self.sample_rate,
            "source_sample_rate": a.source_rate,
            "channels": a.channels,
            "duration_s": round(a.duration_s, 4),
            "original_duration_s": round(a.original_s, 4),
            "cut_s": round(a.cut_s, 4),
            "frames": self.audio_frames,
            "window_frames": self.frames,
            "frame_s": self.frame_s,
            "receptive_field_s": self.receptive_s,
            "encoder_layers": self.encoder_layers,
            "heads": self.heads_per_layer,
            "layer": self.layer,
            "text": c.text,
            "tokens": c.tokens,
            "words": [w.to_json() for w in c.words],
            "alignment_heads": [list(h) for h in self.alignment_heads],
            "alignment_heads_from": self.alignment_source,
            "head_ranking": [s.to_json() for s in self.ranking],
            "notes": list(self.notes),
            "style": self.style.describe(),
            "files": [str(p) for p in self.files],
            "save_attn": str(self.save_attn) if self.save_attn else None,
        }
        if len(self.clips) > 1:
            doc["clips"] = [{"audio": k.name, "duration_s": round(k.audio.duration_s, 4), "text": k.text,
                             "words": [w.to_json() for w in k.words]} for k in self.clips]
        return doc


def parse_heads(text: str | None) -> list[tuple[int, int]] | None:
    """``"3:0,3:1"`` -> ``[(3, 0), (3, 1)]`` (0-based decoder layer : head). Raises UsageError for anything else."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        try:
            l, h = (int(v) for v in part.strip().split(":"))
        except ValueError:
            raise UsageError(f"--heads must be LAYER:HEAD pairs separated by commas (e.g. 3:0,3:2), not '{text}'") from None
        out.append((l, h))
    if not out:
        raise UsageError("--heads is empty")
    return out


def _clip_paths(request: AudioRequest) -> list[str]:
    src = str(request.audio)
    p = Path(src).expanduser()
    if src != "-" and p.is_dir():
        if not request.find_heads:
            raise InputError(f"'{src}' is a folder; give one audio file (a folder of clips goes with --find-heads)")
        from attnviz.inputs.folder import files_in

        clips = files_in(src, AUDIO_SUFFIXES, MAX_CLIPS, "audio files")
        return clips
    return [src]


def run(request: AudioRequest) -> AudioRun:
    """Do the work of ``attnviz audio`` and return what was produced (nothing is printed).

    Raises:
        UsageError (2): bad options (``--layer``/``--heads`` out of range, ``--language`` an English-only model does
        not take...). ModelError (3): not a speech model, unloadable. InputError (4): the clip cannot be read.
        OutputError (5): the files cannot be written. Nothing is written when any of them is raised.
    """

    from attnviz.inputs.audiofile import prepare_audio, read_audio
    from attnviz.inputs.speech import capture_speech, encode, features, load_speech_model, transcribe
    from attnviz.report import RunOutput, check_tensor_path, model_files
    from attnviz.verify import PROVEN, VERIFIED, Verification

    quiet_libraries()
    figure_formats, html = request.output.formats()
    style = request.style.style()
    if request.max_new_tokens is not None and request.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be 1 or more, not {request.max_new_tokens}")
    wanted_heads = parse_heads(request.heads)
    views = parse_views(request.views, AUDIO_VIEWS)
    paths = _clip_paths(request)
    out = request.output
    tensor_path = check_tensor_path(out.save_attn) if out.save_attn else None
    if tensor_path is not None and len(paths) > 1:
        raise UsageError("--save-attn takes one clip, not a folder")
    sm = load_speech_model(request.model.name, request.model.load_options(), weights=False)
    raws = [read_audio(p, sm.max_seconds) for p in paths]
    n_enc = int(getattr(sm.config, "encoder_layers", None) or sm.config.num_hidden_layers)
    layer = _check_layer(request.layer, n_enc)
    decoder_views = [v for v in views if v in ("alignment", "words")] if request.views is not None else []
    whisper_only = [name for name, given in (("--find-heads", request.find_heads), ("--heads", wanted_heads),
                                             ("--language", request.language), ("--task", request.task),
                                             ("--max-new-tokens", request.max_new_tokens is not None),
                                             (f"--views {','.join(decoder_views)}", decoder_views)) if given]
    if not sm.seq2seq and whisper_only:
        raise UsageError(f"{whisper_only[0]} is for Whisper's decoder; '{request.model.name}' ({sm.model_type}) is an "
                         "encoder without one")
    if wanted_heads:
        _check_heads(wanted_heads, int(sm.config.decoder_layers), int(sm.config.decoder_attention_heads))
        wanted_heads = list(dict.fromkeys(wanted_heads))  # a head named twice counts once
    audios = [prepare_audio(r, sm.rate, sm.max_seconds) for r in raws]
    notes: list[str] = []
    for a in audios:
        if a.cut_s > 0:
            notes.append(f"'{a.name}' is {a.original_s:.2f} s; {sm.source.model_id} takes {sm.max_seconds:g} s at "
                         f"a time: showing the first {a.duration_s:.2f} s, {a.cut_s:.2f} s cut from the end")
            notify(notes[-1])
    output = RunOutput(out.out, command="audio", force=out.force, protect=model_files(sm.source.location),
                       settings={"model": sm.source.model_id, "audio": [str(p) for p in paths], "language": request.language,
                                 "task": request.task, "layer": request.layer, "heads": request.heads,
                                 "find_heads": request.find_heads, "format": out.format, "size": request.style.size,
                                 "save_attn": str(tensor_path) if tensor_path else None})
    if not sm.seq2seq:
        views = tuple(v for v in views if v not in ("alignment", "words"))
    stems = _stems(sm, layer, request.find_heads, len(audios), views)
    output.check([f"{s}.{f}" for s in stems for f in figure_formats] + (["report.html"] if html else []), tensor=tensor_path)
    sm = sm.with_weights()
    note = mark_random_weights(output, sm.model)
    label = style.model_label(sm.source.model_id)

    official = [tuple(int(v) for v in h) for h in (getattr(sm.model.generation_config, "alignment_heads", None) or [])] if sm.seq2seq else []
    heads = wanted_heads or official
    source = "--heads" if wanted_heads else "generation_config.alignment_heads" if official else None
    if sm.seq2seq and not heads:
        n_dec = int(sm.config.decoder_layers)
        heads = [(l, h) for l in range(n_dec // 2, n_dec) for h in range(int(sm.config.decoder_attention_heads))]
        source = f"every head of decoder layers {n_dec // 2}..{n_dec - 1} (OpenAI's default: the upper half)"
        notes.append(f"{sm.source.model_id} names no alignment heads in its generation config: word timestamps use {source}")
        notify(notes[-1])

    from attnviz.analysis import alignment as align

    from attnviz.models import check_finite

    clips, per_clip, first = [], [], None
    try:
        for a in audios:
            feats = features(sm, a.samples)
            keep = set() if (request.find_heads or len(audios) > 1 or "encoder" not in views) else {layer}
            everything = tensor_path is not None
            encoded = transcript = None
            if sm.seq2seq:  # the encoder runs once: its maps, generate and the decoder's capture share its output
                encoded = encode(sm, feats, keep, everything)
                transcript = transcribe(sm, feats, request.language, request.task, request.max_new_tokens, encoded)
            att = capture_speech(sm, feats, transcript, keep, everything, encoded)
            clip = _clip_result(sm, a, feats, transcript, att, heads, align, request.language)
            if sm.seq2seq and (request.find_heads or len(audios) > 1):
                per_clip.append(align.head_scores(att.cross.numpy(), transcript.prompt_length, feats.audio_frames))
            if first is None:
                first = (a, feats, transcript, att)
            clips.append(clip)
    except Exception:
        check_finite(sm.source, sm.model)  # broken weights are named first, whatever they broke
        raise
    check_finite(sm.source, sm.model)  # after the forward passes (see SpeechModel.with_weights), before anything is shown
    ranking = align.rank_heads(per_clip) if per_clip else []
    a, feats, transcript, att = first
    notes.extend(att.notes)
    if sm.model_type == "wavlm":
        from attnviz.inputs.speech import wavlm_tolerance

        tol = wavlm_tolerance(next(sm.model.parameters()).dtype)
        verification = Verification(VERIFIED, sm.model_type, dict(att.checked), tol,
                                    "every layer on this clip: the heads' mean vs the module's own weights, and "
                                    "out_proj(P @ V) vs its output")
    else:
        verification = Verification(PROVEN, sm.model_type)
    result = AudioRun(sm.source.model_id, sm.model_type, att.backend, sm.rate, feats.frames, feats.audio_frames,
                      sm.frame_s, sm.receptive_samples / sm.rate, att.encoder_layers, att.heads, layer, clips, heads,
                      source, ranking, (), None, note, style, verification, tuple(notes),
                      request.find_heads or len(audios) > 1)
    from attnviz.pipelines import audio_views as views_mod

    drawers = views_mod.figures(result, sm, a, feats, transcript, att, request.find_heads, official, label, style, views)
    with output:
        for stem, draw in drawers:
            for fmt in figure_formats:
                output.figure(draw(), stem, fmt)
        if tensor_path is not None:
            views_mod.save_attention(att, output.tensor_target(tensor_path), result, transcript)
        if html:
            from attnviz.html.audio import audio_page

            output.page(audio_page(result.to_json(), a, att, transcript, feats, heads, label), "report")
    notify_left_alone(output)
    return replace(result, files=tuple(output.files), save_attn=output.tensor)


def _stems(sm, layer: int, find_heads: bool, n: int, views: tuple[str, ...]) -> list[str]:
    if find_heads or n > 1:
        return ["heads"]
    return [f"encoder-layer{layer}" if v == "encoder" else v for v in views]


def _clip_result(sm, a, feats, transcript, att, heads, align, language: str | None = None) -> Clip:
    if not sm.seq2seq:
        text = None
        if att.logits is not None and sm.tokenizer is not None:
            text = sm.tokenizer.decode(att.logits.argmax(-1).tolist(), skip_special_tokens=True)
        return Clip(a.name, a, text, [], [])
    ids = transcript.ids.tolist()
    _check_heads(heads, att.cross.shape[0], att.cross.shape[1])
    al = align.token_timestamps(att.cross, heads, transcript.prompt_length, feats.audio_frames, sm.frame_s,
                                int(getattr(sm.config, "median_filter_width", 7) or 7))
    tok = sm.tokenizer
    texts = tok.convert_ids_to_tokens(ids)
    special = set(tok.all_special_ids) | {i for i, t in getattr(tok, "added_tokens_decoder", {}).items()
                                          if getattr(t, "special", False)}
    tokens = []
    for i, (tid, t) in enumerate(zip(ids, texts)):
        start = float(al.timestamps[i - 1]) if i > 0 else 0.0
        tokens.append({"index": i, "id": int(tid), "token": t, "text": tok.decode([tid]),
                       "prompt": i < transcript.prompt_length, "special": tid in special,
                       "start_s": round(start, 3), "end_s": round(float(al.timestamps[i]), 3)})
    words = align.words(tok, ids, al.timestamps, transcript.prompt_length,
                        spoken_language(language, tok.convert_ids_to_tokens(ids[:transcript.prompt_length])))
    text = tok.decode(ids[transcript.prompt_length:], skip_special_tokens=True)
    return Clip(a.name, a, text, tokens, words, al)


def spoken_language(option: str | None, prompt_tokens: list[str]) -> str | None:
    """The language name Whisper's word grouping needs (``"chinese"``...): from ``--language`` (a code such as
    ``zh`` or a name), else from the prompt's language token (``<|zh|>``); None when neither says (English rules)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    if option:
        o = option.strip().lower()
        return LANGUAGES.get(o) or (o if o in TO_LANGUAGE_CODE else None)
    for t in prompt_tokens:
        code = t[2:-2] if t.startswith("<|") and t.endswith("|>") else None
        if code in LANGUAGES:
            return LANGUAGES[code]
    return None


def _check_layer(layer: int | None, n: int) -> int:
    layer = -1 if layer is None else layer
    if not -n <= layer < n:
        raise UsageError(f"--layer {layer} is out of range: the encoder has {n} layers (0..{n - 1})")
    return layer % n


def _check_heads(heads, layers: int, per_layer: int) -> None:
    for l, h in heads:
        if not (0 <= l < layers and 0 <= h < per_layer):
            raise UsageError(f"--heads {l}:{h} is out of range: the decoder has {layers} layers (0..{layers - 1}) of "
                             f"{per_layer} heads (0..{per_layer - 1})")
