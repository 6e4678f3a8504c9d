"""``attnviz audio``: options in, :func:`attnviz.pipelines.audio.run`, the transcript and word times (or ``--json``) out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE,
    model_request, output_request, print_files, run_command, style_request,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE

#: Kept in step with attnviz.pipelines.audio.DEFAULT_AUDIO_MODEL (no torch import here).
DEFAULT_AUDIO_MODEL = "openai/whisper-tiny"
#: Kept in step with attnviz.pipelines.audio.AUDIO_VIEWS.
AUDIO_VIEWS = ("spectrogram", "encoder", "alignment", "words")


@app.command("audio")
def audio_command(
    path: str = typer.Argument(..., help="The clip: WAV, FLAC, OGG/Vorbis, Opus, MP3 ('-': standard input); with --find-heads also a folder of clips."),
    model: str = typer.Option(DEFAULT_AUDIO_MODEL, "--model", "-m", help="Hub id or local folder of a speech Transformer (Whisper, wav2vec2, HuBERT, WavLM, Data2VecAudio, UniSpeech)."),
    language: Optional[str] = typer.Option(None, "--language", help="Whisper: the spoken language (e.g. en, fr); default: the model's (multilingual models detect it)."),
    task: Optional[str] = typer.Option(None, "--task", help="Whisper: transcribe or translate (to English)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", "-n", help="Whisper: stop after N generated tokens (default: the model's limit)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Encoder layer of encoder-layer{L}.png (0-based, negative from the end; default: the last)."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Whisper: LAYER:HEAD,... cross-attention heads for the word timestamps (default: the checkpoint's alignment heads)."),
    find_heads: bool = typer.Option(False, "--find-heads", help="Whisper: rank every cross-attention head by how monotonic and focused its alignment is over the clip (or a folder of clips): heads.png and the JSON ranking."),
    views: Optional[str] = typer.Option(None, "--views", help="Views to write: any of spectrogram,encoder,alignment,words (comma-separated; default: all the model has; without encoder no encoder map is kept)."),
    out: Path = OUT,
    fmt: str = FORMAT,
    as_json: bool = JSON,
    save_attn: Optional[Path] = typer.Option(None, "--save-attn", help="Write encoder_attentions [L,H,F,F] (and Whisper's cross_attentions [L,H,T,F], decoder_attentions [L,H,T,T]) to PATH.safetensors."),
    size: str = SIZE,
    dpi: Optional[int] = DPI_OPTION,
    label: Optional[str] = LABEL,
    cmap: Optional[str] = CMAP,
    scale: str = SCALE,
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    allow_pickle: bool = ALLOW_PICKLE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    force: bool = FORCE,
    random_weights_ok: bool = RANDOM_WEIGHTS_OK,
    debug: bool = DEBUG,
) -> None:
    """What each word of a Whisper transcript listens to, and what a speech encoder's frames attend to."""
    options = dict(locals())

    def produce():
        from attnviz.pipelines.audio import AudioRequest, run

        return run(AudioRequest(
            path, language=language, task=task, max_new_tokens=max_new_tokens, layer=layer, heads=heads,
            find_heads=find_heads, views=views, model=model_request(**options), output=output_request(**options),
            style=style_request(**options),
        ))

    run_command(debug, as_json, produce, _print_human)


def _print_human(run) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    c = run.clip
    what = c.audio.describe() if len(run.clips) == 1 else f"{len(run.clips)} clips ({sum(k.audio.duration_s for k in run.clips):.1f} s)"
    console.print(
        f"[bold]{run.style.model_label(run.model_id)}[/bold] · {run.model_type} · {what} · "
        f"{run.audio_frames} frames of {run.frame_s * 1000:g} ms · {run.encoder_layers} encoder layers x "
        f"{run.heads_per_layer} heads · backend {run.backend}",
        soft_wrap=True,
    )
    if run.random_weights:
        console.print(f"[bold red]{run.random_weights.upper()}[/bold red]", soft_wrap=True)
    if run.verification is not None and run.verification.verified:
        console.print(run.verification.describe(), soft_wrap=True)
    if len(run.clips) == 1 and c.text is not None:
        console.print(f"Transcript: {c.text.strip()}", soft_wrap=True)
    if c.words and len(run.clips) == 1:
        table = Table(title="Words (times from the alignment heads' cross-attention, DTW)", title_justify="left")
        for name, justify in (("word", "left"), ("start (s)", "right"), ("end (s)", "right"), ("tokens", "right")):
            table.add_column(name, justify=justify)
        for w in c.words:
            table.add_row(w.text, f"{w.start_s:.2f}", f"{w.end_s:.2f}", ",".join(str(t) for t in w.tokens))
        console.print(table)
    if run.ranking and run.find_heads:
        official = {tuple(h) for h in run.alignment_heads} if run.alignment_source != "--heads" else set()
        table = Table(title=f"Cross-attention heads ranked as alignment heads ({len(run.clips)} clip"
                            f"{'s' if len(run.clips) != 1 else ''})", title_justify="left")
        for name in ("rank", "layer:head", "score", "monotonic", "focus", "on audio", ""):
            table.add_column(name, justify="right" if name not in ("layer:head", "") else "left")
        for k, s in enumerate(run.ranking[:12]):
            table.add_row(str(k + 1), f"{s.layer}:{s.head}", f"{s.score:.3f}", f"{s.monotonic:.3f}", f"{s.focus:.3f}",
                          f"{s.on_audio:.3f}", "alignment head" if (s.layer, s.head) in official else "")
        console.print(table)
    print_files(console, run.files, run.save_attn)
