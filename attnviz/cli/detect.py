"""``attnviz detect``: options in, :func:`attnviz.pipelines.detect.run`, the detections table (or ``--json``) out."""

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

#: Kept in step with attnviz.pipelines.detect.DEFAULT_DETECT_MODEL (no torch import here).
DEFAULT_DETECT_MODEL = "facebook/detr-resnet-50"


@app.command("detect")
def detect_command(
    path: str = typer.Argument(..., help="The photo: JPEG, PNG, WebP, BMP, GIF (first frame), TIFF..."),
    model: str = typer.Option(DEFAULT_DETECT_MODEL, "--model", "-m", help="Hub id or local folder of an object-detection Transformer (DETR, Conditional DETR, DAB-DETR, Table Transformer, YOLOS, Deformable DETR, RT-DETR)."),
    threshold: float = typer.Option(0.5, "--threshold", "-t", help="Score (0..1) a detection needs (the image processor's post_process_object_detection)."),
    obj: Optional[int] = typer.Option(None, "--object", help="Draw only this detection (0-based, in score order; default: every one)."),
    max_objects: int = typer.Option(10, "--max-objects", help="Draw the figures of at most N top-scoring detections (0: every one)."),
    method: Optional[str] = typer.Option(None, "--method", help="Explain --object (default: the top detection) by its class logit with these methods: attention, grad-attention, relevance (Chefer et al. 2021), value-norm; comma-separated or 'all'."),
    point: Optional[str] = typer.Option(None, "--point", help="X,Y: pixel of the photo whose encoder attention to draw (point-X-Y.png)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Decoder layer of the object views (0-based, negative from the end; default: the last)."),
    out: Path = OUT,
    fmt: str = FORMAT,
    as_json: bool = JSON,
    save_attn: Optional[Path] = typer.Option(None, "--save-attn", help="Write every attention tensor (dense maps, or deformable weights and sampling locations) to PATH.safetensors."),
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
    verify: bool = VERIFY,
) -> None:
    """Where a detection Transformer looks for each object: boxes, each object query's attention, an encoder pixel's."""
    options = dict(locals())

    def produce():
        from attnviz.pipelines.detect import DetectRequest, run

        return run(DetectRequest(
            Path(path), threshold=threshold, object=obj, point=point, layer=layer, max_objects=max_objects, method=method or (),
            model=model_request(**options), output=output_request(**options), style=style_request(**options),
        ))

    run_command(debug, as_json, produce, _print_human)


def _print_human(run) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    levels = ", ".join(f"{g[0]}x{g[1]} (stride {lv['stride']})" for lv in run.feature_levels for g in [lv["grid"]])
    console.print(
        f"[bold]{run.style.model_label(run.model_id)}[/bold] · {run.model_type} · {run.attention} attention · "
        f"{run.num_queries} object queries · feature levels {levels} · backend {run.backend}",
        soft_wrap=True,
    )
    if run.random_weights:
        console.print(f"[bold red]{run.random_weights.upper()}[/bold red]", soft_wrap=True)
    if run.verification is not None and run.verification.verified:
        console.print(run.verification.describe(), soft_wrap=True)
    if run.detections:
        spreads = {o["index"]: o for o in run.objects}
        table = Table(title=f"Detections (score >= {run.threshold:g}; decoder layer {run.layer})"
                      if run.found else "Top-scoring queries (none reached the threshold)", title_justify="left")
        for name, justify in (("#", "right"), ("query", "right"), ("label", "left"), ("score", "right"),
                              ("box x0,y0,x1,y1 (px)", "left"), ("tightest head", "left")):
            table.add_column(name, justify=justify)
        for d in run.detections:
            o = spreads.get(d.index)
            tight = f"head {o['tightest_head']} ({o['tightest_spread_px']:.0f} px spread)" if o else "-"
            table.add_row(str(d.index), str(d.query), d.label, f"{d.score:.3f}",
                          ", ".join(f"{v:.0f}" for v in d.box), tight)
        console.print(table)
    if run.point is not None:
        p = run.point
        console.print(f"--point {p['x']:g},{p['y']:g} is cell (row {p['cell'][0]}, col {p['cell'][1]}) of the "
                      f"{p['grid'][0]}x{p['grid'][1]} map; tightest head {p['tightest_head']} "
                      f"({p['tightest_spread_px']:.0f} px spread)", soft_wrap=True)
    print_methods(console, run.explanation)
    print_files(console, run.files, run.save_attn)
