"""The figures of ``attnviz audio`` and its ``--save-attn`` file (used by :mod:`attnviz.pipelines.audio`).

:func:`figures` returns ``(stem, draw)`` pairs; ``draw()`` makes the Figure when the writer asks for it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def figures(run, sm, audio, feats, transcript, att, find_heads: bool, official, label: str, style,
            views=("spectrogram", "encoder", "alignment", "words")) -> list[tuple[str, Callable]]:
    """The views a run draws: ``heads`` (``--find-heads`` or a folder), else those of ``views``: ``spectrogram``,
    ``encoder-layer{L}`` and, for Whisper, ``alignment`` and ``words``."""
    from attnviz.render import audio as render

    if find_heads or len(run.clips) > 1:
        L = max(s.layer for s in run.ranking) + 1
        H = max(s.head for s in run.ranking) + 1
        grid = np.zeros((L, H))
        for s in run.ranking:
            grid[s.layer, s.head] = s.score
        n = len(run.clips)
        sub = (f"score = monotonic x focus x on-audio over {n} clip{'s' if n != 1 else ''} "
               f"({sum(len(c.tokens) for c in run.clips)} tokens); outlined: the checkpoint's alignment heads")
        return [("heads", lambda: render.heads_view(grid, official, title=f"{label}: cross-attention heads ranked as alignment heads",
                                                   subtitle=sub, style=style, model=run.model_id))]
    clip = run.clips[0]
    af = feats.audio_frames
    dur = f"{audio.duration_s:.2f} s"
    what = "log-mel input features" if feats.mel is not None else "STFT spectrogram (25 ms window, 10 ms hop)"
    drawn: dict[str, tuple[str, Callable]] = {}
    drawn["spectrogram"] = ("spectrogram", lambda: render.spectrogram_view(
        audio.samples, audio.rate, mel=feats.mel, title=f"{label}: {clip.name}",
        subtitle=f"{dur} at {audio.rate} Hz; {what}" + (f"; transcript: {clip.text.strip()}" if clip.text else ""),
        style=style, model=run.model_id))
    if run.layer in att.encoder:
        drawn["encoder"] = _encoder_figure(run, att, af, feats, run.layer, label, style)
    if sm.seq2seq:
        drawn.update(_whisper_figures(run, audio, feats, transcript, att, clip, dur, label, style))
    return [drawn[v] for v in views if v in drawn]


def _encoder_figure(run, att, af, feats, layer, label, style):
    from attnviz.render import audio as render

    kept = att.encoder[layer][:, :af, :af]
    maps = [m.numpy() for m in kept] + [kept.mean(0).numpy()]  # H + 1 float32 [F, F] views: no copy of the layer
    share = float(kept.sum(-1, dtype=torch.float64).mean())
    names = [f"head {h}" for h in range(len(maps) - 1)] + ["mean"]
    sub = f"encoder layer {layer} self-attention over the clip's {af} frames ({run.frame_s * 1000:g} ms each)"
    if af < feats.frames:
        sub += f"; on average {share:.0%} of a row stays on the clip, the rest goes to the {feats.frames - af} frames of padding"
    return (f"encoder-layer{layer}", lambda sub=sub: render.encoder_view(
        maps, run.frame_s, names=names, title=f"{label}: encoder layer {layer}", subtitle=sub, style=style, model=run.model_id))


def _whisper_figures(run, audio, feats, transcript, att, clip, dur, label, style) -> dict:
    from attnviz.render import audio as render

    af = feats.audio_frames
    P = transcript.prompt_length
    T = int(att.cross.shape[2])
    heads = run.alignment_heads
    # rows: the decoder positions P-1 .. T-2, each labelled with the token it writes next (P .. T-1); DTW uses P .. T-2
    rows = np.stack([att.cross[l, h, P - 1:T - 1, :af].numpy() for l, h in heads]).mean(0).astype(np.float64)
    tokens = [t["text"] for t in clip.tokens[P:T]]
    starts = [t["start_s"] for t in clip.tokens[P:T]]
    al = clip.alignment
    hs = ", ".join(f"{l}:{h}" for l, h in heads[:8]) + (" ..." if len(heads) > 8 else "")
    sub = (f"row: the token the decoder writes next; colour: the mean cross-attention of the alignment heads ({hs}) "
           f"over the clip's {af} frames; tick: the token's start by DTW, as generate(return_token_timestamps=True)")
    return {
        "alignment": ("alignment", lambda: render.alignment_view(
            rows, run.frame_s, tokens, ends=starts, path=(al.path_rows, al.path_frames), path_offset=1,
            title=f"{label}: which frames the decoder reads while it writes each token", subtitle=sub, style=style,
            model=run.model_id)),
        "words": ("words", lambda: render.spectrogram_view(
            audio.samples, audio.rate, mel=feats.mel, words=clip.words, title=f"{label}: word timestamps from cross-attention",
            subtitle=f"{clip.name}, {dur}; each word from the end of the previous token to the end of its last token",
            style=style, model=run.model_id, view="words")),
    }


def attention_tensors(att) -> dict:
    """``encoder_attentions [L, H, F, F]``, and for Whisper ``cross_attentions [L, H, T, F]`` and
    ``decoder_attentions [L, H, T, T]`` (float32, every frame of the window, padding included)."""
    import torch

    tensors = {"encoder_attentions": torch.stack([att.encoder[l] for l in sorted(att.encoder)])}
    if att.cross is not None:
        tensors["cross_attentions"] = att.cross
    if att.decoder is not None:
        tensors["decoder_attentions"] = att.decoder
    return tensors


def save_attention(att, path, run, transcript) -> None:
    """Write :func:`attention_tensors` with metadata ``model``, ``sample_rate``, ``frame_s``, ``frames`` (the clip's),
    ``window_frames``, ``input_ids`` and ``prompt_length`` (Whisper), ``alignment_heads``."""
    from attnviz.report import save_tensors

    save_tensors(path, attention_tensors(att), {
        "model": run.model_id, "model_type": run.model_type, "sample_rate": run.sample_rate, "frame_s": run.frame_s,
        "frames": run.audio_frames, "window_frames": run.frames, "duration_s": run.clip.audio.duration_s,
        "input_ids": transcript.ids.tolist() if transcript is not None else None,
        "prompt_length": transcript.prompt_length if transcript is not None else None,
        "alignment_heads": [list(h) for h in run.alignment_heads], "text": run.text,
    })
