"""Whisper's word timestamps from cross-attention, and a ranking of heads by how well they align (pure functions).

Token timestamps follow transformers' ``WhisperGenerationMixin._extract_token_timestamps`` (after OpenAI's
``whisper/timing.py``): the cross-attention rows of the chosen alignment heads over the clip's frames are
standardised over the tokens (per frame: minus the mean, over the standard deviation), median-filtered along time
(width ``median_filter_width``, 7), averaged over the heads, and aligned to the frames by dynamic time warping of the
negated matrix; each jump of the path to the next token gives a time. As in transformers (and its ASR pipeline),
``timestamps[i]`` is where token ``i`` *ends*; token ``i`` spans ``timestamps[i-1]..timestamps[i]``. transformers
has no cross-attention row for the last token (end of text) and repeats the previous time for it; the prompt's tokens
get 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def alignment_matrix(cross, heads: Sequence[tuple[int, int]], prompt_length: int, audio_frames: int,
                     filter_width: int = 7):
    """The matrix DTW runs on: ``[tokens, frames]`` float32 (torch), standardised, median-filtered, head-averaged.

    Args:
        cross: float ``[L, H, T, F]`` cross-attention of every decoder position (prompt + generated).
        heads: ``(layer, head)`` pairs, 0-based.
        prompt_length: decoder prompt tokens (their rows are left out, as in transformers).
        audio_frames: the clip's encoder frames (transformers: ``num_frames // 2``); later frames are padding.

    Returns:
        ``[T - 1 - prompt_length, audio_frames]`` (rows of the generated tokens but the last), or an empty matrix.
    """
    import torch
    from transformers.models.whisper.generation_whisper import _median_filter

    T = int(cross.shape[2])
    w = torch.stack([cross[l, h] for l, h in heads]).float()[:, prompt_length:T - 1, :audio_frames]  # [A, T', F']
    if w.shape[1] == 0:
        return w[0]
    std = torch.std(w, dim=-2, keepdim=True, unbiased=False)
    mean = torch.mean(w, dim=-2, keepdim=True)
    w = (w - mean) / std
    w = _median_filter(w[None], filter_width)[0]
    return w.mean(dim=0)


@dataclass(frozen=True)
class Alignment:
    """DTW result: ``timestamps`` float ``[T]`` seconds (token ``i`` ends at ``timestamps[i]``); ``path``: the DTW
    path as (token row, frame) int arrays over the generated tokens but the last."""

    timestamps: np.ndarray
    path_rows: np.ndarray
    path_frames: np.ndarray


def token_timestamps(cross, heads: Sequence[tuple[int, int]], prompt_length: int, audio_frames: int,
                     frame_s: float = 0.02, filter_width: int = 7) -> Alignment:
    """Token end times (seconds) from the alignment heads' cross-attention, as ``generate(...,
    return_token_timestamps=True)`` computes them (see the module docstring)."""
    from transformers.models.whisper.generation_whisper import _dynamic_time_warping

    T = int(cross.shape[2])
    matrix = alignment_matrix(cross, heads, prompt_length, audio_frames, filter_width)
    out = np.zeros(T, dtype=np.float64)
    if matrix.shape[0] == 0:
        return Alignment(out, np.zeros(0, int), np.zeros(0, int))
    text_idx, time_idx = _dynamic_time_warping(-matrix.double().numpy())
    jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)
    jump_times = time_idx[jumps] * frame_s
    out[prompt_length:T - 1] = jump_times
    out[T - 1] = jump_times[-1]
    return Alignment(out, np.asarray(text_idx, int), np.asarray(time_idx, int))


@dataclass(frozen=True)
class Word:
    """A word of the transcript: ``text``, ``tokens`` (indices into the decoder sequence), ``start_s``/``end_s``."""

    text: str
    tokens: tuple[int, ...]
    start_s: float
    end_s: float

    def to_json(self) -> dict:
        return {"text": self.text, "tokens": list(self.tokens), "start_s": round(self.start_s, 3),
                "end_s": round(self.end_s, 3)}


def words(tokenizer, ids: Sequence[int], timestamps: np.ndarray, prompt_length: int, language: str | None = None) -> list[Word]:
    """Group the generated text tokens into words (transformers' Whisper tokenizer rule: a new word at a leading
    space or punctuation, punctuation merged into its word) with the ASR pipeline's spans: a word runs from the end
    of the token before its first token to the end of its last token.

    Special tokens (end of text, timestamps) are left out.
    """
    from transformers.models.whisper.tokenization_whisper import _combine_tokens_into_words

    eos = int(tokenizer.eos_token_id) if tokenizer.eos_token_id is not None else None
    positions = [i for i in range(prompt_length, len(ids)) if eos is None or int(ids[i]) < eos]
    if not positions:
        return []
    texts, _tok, groups = _combine_tokens_into_words(tokenizer, [int(ids[i]) for i in positions], language)
    out = []
    for text, group in zip(texts, groups):
        seq = [positions[g] for g in group]
        start = float(timestamps[seq[0] - 1]) if seq[0] > 0 else 0.0
        out.append(Word(text.strip() or text, tuple(seq), round(start, 6), round(float(timestamps[seq[-1]]), 6)))
    return out


#: Frames either side of a row's peak counted as "near" it in :class:`HeadScore` (3 frames = 60 ms).
NEAR_FRAMES = 3


@dataclass(frozen=True)
class HeadScore:
    """How well one cross-attention head aligns tokens to time over some clips (no reference timings needed).

    Over the rows DTW uses (generated tokens but the last), with each row renormalised over the clip's frames:
    ``monotonic``: Pearson correlation (floored at 0) between the token index and the row's attention-weighted mean
    time; ``focus``: mean share of a row within :data:`NEAR_FRAMES` frames (60 ms) of its peak; ``on_audio``: mean
    share of the raw row on the clip's frames (the rest goes to Whisper's padding). ``score = monotonic * focus *
    on_audio`` (0..1): a head that walks through the clip token by token, sharply, and looks at the speech.
    """

    layer: int
    head: int
    score: float
    monotonic: float
    focus: float
    on_audio: float

    def to_json(self) -> dict:
        return {"layer": self.layer, "head": self.head, "score": round(self.score, 6),
                "monotonic": round(self.monotonic, 6), "focus": round(self.focus, 6), "on_audio": round(self.on_audio, 6)}


def head_scores(cross, prompt_length: int, audio_frames: int) -> np.ndarray:
    """``[L, H, 4]`` float64 (monotonic, focus, on_audio, rows) of every head on one clip; see :class:`HeadScore`.

    ``cross``: ``[L, H, T, F]`` probabilities (a torch tensor or an array); the rows of the generated tokens but the
    last (those DTW uses) are scored, one layer at a time (memory: a few copies of one layer's ``[H, T, F]``).
    """
    L, H, T = int(cross.shape[0]), int(cross.shape[1]), int(cross.shape[2])
    out = np.zeros((L, H, 4))
    R = T - 1 - prompt_length
    if R <= 0:
        return out
    frames = np.arange(audio_frames, dtype=np.float64)
    for l in range(L):
        layer = np.asarray(cross[l, :, prompt_length:T - 1, :audio_frames], dtype=np.float64)  # [H, R, F']
        mass = layer.sum(-1)  # [H, R]
        rows = layer / np.maximum(mass[..., None], 1e-12)
        centre = rows @ frames  # [H, R] frames
        if R > 1:
            idx = np.arange(R) - (R - 1) / 2
            dc = centre - centre.mean(-1, keepdims=True)
            denom = np.sqrt((dc ** 2).sum(-1) * (idx ** 2).sum())
            mono = np.where(denom > 0, (dc * idx).sum(-1) / np.maximum(denom, 1e-300), 0.0).clip(0, 1)
        else:
            mono = np.ones(H)
        cum = np.concatenate([np.zeros((H, R, 1)), np.cumsum(rows, -1)], -1)
        peak = rows.argmax(-1)
        lo, hi = np.clip(peak - NEAR_FRAMES, 0, audio_frames), np.clip(peak + NEAR_FRAMES + 1, 0, audio_frames)
        focus = (np.take_along_axis(cum, hi[..., None], -1) - np.take_along_axis(cum, lo[..., None], -1))[..., 0].mean(-1)
        out[l, :, 0], out[l, :, 1], out[l, :, 2], out[l, :, 3] = mono, focus, mass.mean(-1), R
    return out


def rank_heads(per_clip: Sequence[np.ndarray]) -> list[HeadScore]:
    """Average :func:`head_scores` over clips (weighted by their token rows) and rank heads by ``score``, best first."""
    stack = np.stack(per_clip)  # [C, L, H, 4]
    weights = stack[..., 3]
    total = np.maximum(weights.sum(0), 1e-12)
    mono, focus, on_audio = ((stack[..., k] * weights).sum(0) / total for k in range(3))
    L, H = mono.shape
    scores = [HeadScore(l, h, float(mono[l, h] * focus[l, h] * on_audio[l, h]), float(mono[l, h]), float(focus[l, h]),
                        float(on_audio[l, h])) for l in range(L) for h in range(H)]
    return sorted(scores, key=lambda s: (-s.score, s.layer, s.head))
