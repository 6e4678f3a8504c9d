"""Audio files in, one mono float32 signal at the model's sampling rate out.

:func:`read_audio` decodes WAV, FLAC, OGG/Vorbis, Opus and MP3 (where the installed libsndfile reads MP3: 1.1.0 and
later) through ``soundfile``; ``-`` reads the file from standard input. :func:`prepare_audio` mixes every channel to
mono (their mean), resamples with ``soxr`` (``"HQ"`` quality) to the feature extractor's rate and cuts the signal to
the longest stretch the model takes, saying what was cut.

Limits: a file over :data:`MAX_FILE_BYTES` is refused before it is read (an hour of 48 kHz stereo float is 1.4 GB).
"""

from __future__ import annotations

import io
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnviz.errors import InputError

#: Largest audio file read (bytes): 2 GiB.
MAX_FILE_BYTES = 2 << 30
FORMATS = "WAV, FLAC, OGG/Vorbis, Opus, MP3"


@dataclass(frozen=True)
class RawAudio:
    """A decoded file: ``samples`` float32 ``[n, channels]`` in -1..1 at ``rate`` Hz; ``name``: what the user gave;
    ``total_frames``: the file's length in samples per channel (more than ``n`` when only its start was decoded)."""

    samples: np.ndarray
    rate: int
    name: str
    total_frames: int | None = None

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        """The file's length in seconds (all of it, decoded or not)."""
        return (self.total_frames if self.total_frames is not None else self.samples.shape[0]) / self.rate


@dataclass(frozen=True)
class Audio:
    """The signal the model hears: ``samples`` float32 ``[n]`` mono at ``rate`` Hz.

    ``source_rate``/``channels``: the file's; ``original_s``: the file's length (seconds); ``cut_s``: seconds cut off
    its end because the model takes no more (0.0 when nothing was cut).
    """

    samples: np.ndarray
    rate: int
    source_rate: int
    channels: int
    original_s: float
    cut_s: float
    name: str

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.rate

    @property
    def resampled(self) -> bool:
        return self.source_rate != self.rate

    def describe(self) -> str:
        """One line: length, rate and what was done to the file's signal."""
        parts = [f"{self.duration_s:.2f} s at {self.rate} Hz"]
        if self.resampled:
            parts.append(f"resampled from {self.source_rate} Hz")
        if self.channels > 1:
            parts.append(f"{self.channels} channels mixed to mono")
        return ", ".join(parts)


def read_audio(source: str | os.PathLike, max_seconds: float | None = None) -> RawAudio:
    """Decode an audio file (``"-"``: standard input) with ``soundfile``; with ``max_seconds``, only its first
    ``max_seconds`` (plus one second, for the resampler's edge) are decoded.

    Returns:
        :class:`RawAudio` with float32 samples ``[n, channels]`` in -1..1 at the file's rate (Hz).

    Raises:
        InputError: missing, a folder, a pipe or device, empty, larger than :data:`MAX_FILE_BYTES`, not audio
        libsndfile can decode, no samples, or samples that are not finite.
    """
    import soundfile as sf

    name = str(source)
    if name == "-":
        data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        if not data:
            raise InputError("standard input is empty: pipe an audio file into 'attnviz audio -'")
        if len(data) > MAX_FILE_BYTES:
            raise InputError(f"standard input holds more than {MAX_FILE_BYTES >> 30} GiB; give a shorter clip")
        handle = io.BytesIO(data)
        name = "standard input"
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise InputError(f"audio file '{name}' does not exist")
        if path.is_dir():
            raise InputError(f"'{name}' is a folder, not an audio file")
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"'{name}' is not a regular file (a pipe or device?); give an audio file, or '-' for standard input")
        if st.st_size == 0:
            raise InputError(f"audio file '{name}' is empty")
        if st.st_size > MAX_FILE_BYTES:
            raise InputError(f"audio file '{name}' is {st.st_size / (1 << 30):.1f} GiB; attnviz reads files up to "
                             f"{MAX_FILE_BYTES >> 30} GiB (cut the part you want first)")
        handle = path
    try:
        with sf.SoundFile(handle) as f:
            rate, total = int(f.samplerate), int(f.frames)
            n = total if max_seconds is None or total <= 0 else min(total, int(np.ceil((max_seconds + 1) * rate)))
            samples = f.read(n if total > 0 else -1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        why = " ".join(str(exc).split())[:160]
        if isinstance(handle, io.BytesIO):
            why = why.replace(repr(handle), "standard input").replace(str(handle), "standard input")
        raise InputError(f"'{name}' is not an audio file libsndfile can read ({FORMATS}): {why}") from None
    if samples.size == 0:
        raise InputError(f"'{name}' holds no audio samples")
    if not np.isfinite(samples).all():
        raise InputError(f"'{name}' holds samples that are NaN or infinite")
    return RawAudio(samples, rate, name, max(total, samples.shape[0]))


def prepare_audio(raw: RawAudio, rate: int, max_seconds: float | None) -> Audio:
    """Mix ``raw`` to mono, resample it to ``rate`` Hz (soxr, "HQ") and cut it to ``max_seconds``.

    Returns:
        :class:`Audio`: float32 ``[n]`` samples; ``cut_s`` says how many seconds of the end were cut.

    Raises:
        InputError: the clip is shorter than one sample at ``rate``.
    """
    mono = raw.samples.mean(axis=1, dtype=np.float64).astype(np.float32) if raw.channels > 1 else raw.samples[:, 0]
    if raw.channels > 1:
        loud = float(np.abs(raw.samples).max())
        if loud > 1e-3 and float(np.abs(mono).max()) < 0.01 * loud:
            import warnings

            from attnviz.errors import AttnvizWarning

            warnings.warn(f"'{raw.name}': its {raw.channels} channels cancel out when mixed to mono (the mix peaks at "
                          f"{float(np.abs(mono).max()):.2g}, the channels at {loud:.2g}); the model hears near silence",
                          AttnvizWarning, stacklevel=2)
    if raw.rate != rate:
        import soxr

        mono = soxr.resample(mono, raw.rate, rate, quality="HQ").astype(np.float32, copy=False)
    if mono.size == 0:
        raise InputError(f"'{raw.name}' is too short to resample to {rate} Hz")
    cut = 0.0
    if max_seconds is not None and raw.duration_s > max_seconds:
        keep = min(mono.size, int(round(max_seconds * rate)))
        mono = mono[:keep]
        cut = raw.duration_s - keep / rate
    return Audio(np.ascontiguousarray(mono), rate, raw.rate, raw.channels, raw.duration_s, cut, raw.name)
