"""``attnviz image``: options in, :func:`attnviz.pipelines.image.run`, the summary (or ``--json``) out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, VERIFY,
    model_request, output_request, print_files, print_methods, run_command, style_request,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE
from attnviz.models import DEFAULT_IMAGE_MODEL

#: The views ``attnviz image`` can write (kept in step with attnviz.pipelines.image.IMAGE_VIEWS; no torch import here).
IMAGE_VIEWS = ("report", "heads", "rollout", "patch", "predictions")


@app.command("image")
def image_command(
    path: str = typer.Argument(..., help="The photo: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF..."),
    model: str = typer.Option(DEFAULT_IMAGE_MODEL, "--model", "-m", help="Hub id or local folder of a ViT-family model."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer of the per-head view (0-based, negative from the end; default: the last)."),
    head: Optional[int] = typer.Option(None, "--head", help="Show this head (0-based) in the report instead of the head mean, and only it (plus the mean) in the per-head views."),
    out: Path = OUT,
    fmt: str = FORMAT,
    as_json: bool = JSON,
    save_attn: Optional[Path] = typer.Option(None, "--save-attn", help="Write raw attention [L, H, T, T] and the rollout [rows, cols] to PATH.safetensors."),
    head_fusion: str = typer.Option("mean", "--head-fusion", help="Rollout: fuse each layer's heads by mean, max or min."),
    discard_ratio: float = typer.Option(0.0, "--discard-ratio", help="Rollout: zero this fraction (0..1) of the lowest fused weights (never attention to [CLS])."),
    patch: Optional[str] = typer.Option(None, "--patch", help="X,Y: pixel of the photo (after EXIF rotation) whose patch's attention to show."),
    size: str = SIZE,
    dpi: Optional[int] = DPI_OPTION,
    label: Optional[str] = LABEL,
    cmap: Optional[str] = CMAP,
    scale: str = SCALE,
    views: str = typer.Option(",".join(IMAGE_VIEWS), "--views", help="Views to write: any of report,heads,rollout,patch,predictions."),
    method: Optional[str] = typer.Option(None, "--method", help="Also draw these methods (comma-separated, or 'all'): attention, rollout, grad-attention, relevance (Chefer et al. 2021), value-norm (Kobayashi et al. 2020)."),
    target_class: Optional[int] = typer.Option(None, "--target-class", help="Class (0-based) the gradient methods explain (default: the top class)."),
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    allow_pickle: bool = ALLOW_PICKLE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    force: bool = FORCE,
    random_weights_ok: bool = RANDOM_WEIGHTS_OK,
    debug: bool = DEBUG,
    verify: bool = VERIFY,
) -> None:
    """Attention of a Vision Transformer over a photo: per-head heatmaps, rollout, predictions and attention sinks."""
    options = dict(locals())

    def produce():
        from attnviz.pipelines.image import ImageRequest, run

        return run(ImageRequest(
            path, layer=layer, head=head, head_fusion=head_fusion, discard_ratio=discard_ratio, patch=patch, views=views,
            method=method or (), target_class=target_class,
            model=model_request(**options), output=output_request(**options), style=style_request(**options),
        ))

    run_command(debug, as_json, produce, _print_human)


def _print_human(run) -> None:
    from rich.console import Console
    from rich.table import Table

    from attnviz.render.layout import DEFAULT_STYLE

    console = Console(highlight=False)
    r = run.result
    rows, cols = r.grid
    console.print(
        f"[bold]{(run.style or DEFAULT_STYLE).model_label(r.model_id)}[/bold] · {r.num_layers} layers × {r.num_heads} heads · grid {rows}×{cols} · "
        f"{r.prefix_tokens} prefix token{'s' if r.prefix_tokens != 1 else ''} · backend {r.backend}",
        soft_wrap=True,
    )
    if run.random_weights:
        console.print(f"[bold red]{run.random_weights.upper()}[/bold red]", soft_wrap=True)
    if getattr(r.verification, "verified", False):
        console.print(r.verification.describe())
    if r.predictions:
        table = Table(title="Predictions (softmax of the logits)", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("label")
        table.add_column("score", justify="right")
        for i, p in enumerate(r.predictions, 1):
            table.add_row(str(i), p.label, f"{p.score:.3f}")
        console.print(table)
    if run.sinks:
        n = rows * cols
        cells = "; ".join(f"(row {s.row}, col {s.col}) {s.share:.0%} of the {s.signal} ({s.share * n:.0f}x uniform)" for s in run.sinks)
        console.print(f"[yellow]attention sink{'s' if len(run.sinks) > 1 else ''}:[/yellow] {cells}", soft_wrap=True)
    if run.patch is not None:
        x, y, row, col = run.patch
        console.print(f"--patch {x:g},{y:g} is patch (row {row}, col {col})")
    print_methods(console, run.explanation)
    print_files(console, run.files, run.save_attn)
