"""The HTML report of ``attnviz audio``: one self-contained, offline page.

The clip itself (an embedded 16-bit WAV) with the player; the transcript's words in order — hovering a word draws what
its tokens read (the alignment heads' mean cross-attention over the clip's frames, a curve over time in seconds) and
marks the word's span; clicking it plays the clip from the word's start. Encoder-only models: the player and the run's
numbers. Drawn by ``assets/audio.js`` under the pages' Content-Security-Policy (no network; ``media-src data:``).
"""

from __future__ import annotations

import base64
import io
from typing import Mapping

import numpy as np

from attnviz.html.page import page_title, render_page


def wav_data_uri(samples: np.ndarray, rate: int) -> str:
    """float32 ``[n]`` samples as a ``data:audio/wav`` URI (16-bit PCM, written by soundfile in memory)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1, 1), rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def audio_payload(document: Mapping, audio, att, transcript, feats, heads) -> dict:
    """The data ``audio.js`` draws: the run's ``--json`` document, the clip, and per word its attention curve
    (``words[i].curve``: the mean, over the alignment heads and the word's tokens, of the cross-attention row that
    *writes* each token -- the row at the position before it, as in ``alignment.png`` and the DTW -- over the clip's
    frames, rounded to 5 decimals)."""
    doc = {k: v for k, v in document.items() if k not in ("files", "save_attn", "head_ranking")}
    doc["head_ranking"] = document.get("head_ranking", [])[:12]
    doc["type"] = "audio"
    doc["clip"] = wav_data_uri(audio.samples, audio.rate)
    words = []
    af = feats.audio_frames
    for w in document.get("words", []):
        w = dict(w)
        if att.cross is not None and transcript is not None:
            rows = [t - 1 for t in w["tokens"] if t >= 1]
            if rows:
                curve = np.stack([att.cross[l, h, rows, :af].numpy() for l, h in heads]).mean((0, 1))
                w["curve"] = np.round(curve.astype(np.float64), 5).tolist()
        words.append(w)
    doc["words"] = words
    return doc


def audio_page(document: Mapping, audio, att, transcript, feats, heads, label: str | None = None) -> str:
    """The HTML report of an ``attnviz audio`` run (see :func:`audio_payload`)."""
    return render_page(audio_payload(document, audio, att, transcript, feats, heads),
                       page_title(document["model"], label, "audio"), script="audio.js", styles=("attnviz.css", "audio.css"))
