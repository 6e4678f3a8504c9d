"""``attnviz faithfulness``: options in, :func:`attnviz.pipelines.faithfulness.run`, the table (or ``--json``) out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, VERIFY,
    model_request, output_request, print_files, run_command, style_request,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE
from attnviz.models import DEFAULT_IMAGE_MODEL


@app.command("faithfulness")
def faithfulness_command(
    path: Optional[str] = typer.Argument(None, help="A photo or a folder of photos (image classifiers); a corpus file, one text per line or .jsonl/.csv/.parquet (text models)."),
    model: str = typer.Option(DEFAULT_IMAGE_MODEL, "--model", "-m", help="Hub id or local folder of an image classifier, a text classifier or a causal language model."),
    text: Optional[str] = typer.Option(None, "--text", help="One text to test (text models), instead of a corpus file."),
    column: str = typer.Option("text", "--column", help="Text column of a .jsonl/.csv/.parquet corpus."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Tokens per text at most (default: the model's limit)."),
    methods: str = typer.Option("all", "--methods", help="Methods to test (comma-separated): attention, rollout, grad-attention, relevance, value-norm; or all."),
    steps: int = typer.Option(10, "--steps", help="Slices of the perturbation curve (patches removed in this many equal steps)."),
    baseline: str = typer.Option("auto", "--baseline", help="What a removed unit becomes. Photos: mean (the photo's mean colour, the default) or blur. Texts: mask, unk or pad (default: the first the tokenizer has)."),
    seeds: int = typer.Option(5, "--seeds", help="Random orders the methods are compared with."),
    batch_size: int = typer.Option(16, "--batch-size", help="Perturbed photos per forward pass."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer of the one-layer methods (attention, grad-attention, value-norm); default: the last."),
    target_class: Optional[int] = typer.Option(None, "--target-class", help="Follow this class (0-based) instead of each photo's top class."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Read at most this many photos of a folder or texts of a corpus."),
    out: Path = OUT,
    fmt: str = typer.Option("png", "--format", help="Figure format: png, svg or pdf (several with commas)."),
    as_json: bool = JSON,
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
    """How faithful is each explanation? Remove patches or tokens in the order a method ranks them and follow the target's probability."""
    options = dict(locals())

    def produce():
        from attnviz.pipelines.faithfulness import FaithfulnessRequest, run

        return run(FaithfulnessRequest(
            path, text=text, column=column, max_length=max_length, methods=methods, steps=steps, baseline=baseline, seeds=seeds, batch_size=batch_size, layer=layer,
            target_class=target_class, limit=limit,
            model=model_request(**options), output=output_request(**options), style=style_request(**options),
        ))

    run_command(debug, as_json, produce, _print_human)


def _print_human(run) -> None:
    from rich.console import Console
    from rich.table import Table

    from attnviz.render.layout import DEFAULT_STYLE

    console = Console(highlight=False)
    n = len(run.inputs)
    noun = "photo" if run.unit == "patch" else "text"
    units = sorted({i.units for i in run.inputs})
    count = f"{units[0]}" if len(units) == 1 else f"{units[0]}-{units[-1]}"
    console.print(f"[bold]{(run.style or DEFAULT_STYLE).model_label(run.model_id)}[/bold] · {n} {noun}{'s' if n != 1 else ''} · "
                  f"{count} {run.plural} in {run.steps} steps · baseline {run.baseline} · {run.forward_passes} forward "
                  f"passes", soft_wrap=True)
    if run.random_weights:
        console.print(f"[bold red]{run.random_weights.upper()}[/bold red]", soft_wrap=True)
    table = Table(title=f"Area under the target-probability curve (mean over {noun}s)", title_justify="left")
    table.add_column("method")
    table.add_column("positive AUC ↓", justify="right")
    table.add_column("negative AUC ↑", justify="right")
    table.add_column("negative − positive ↑", justify="right")
    rnd = run.random_summary() if run.seeds else None
    for s in run.scores:
        table.add_row(s.name, f"{s.positive_auc:.3f}", f"{s.negative_auc:.3f}", f"{s.negative_auc - s.positive_auc:+.3f}")
    if rnd:
        table.add_row(f"random ({rnd['seeds']} orders)", f"{rnd['positive_auc']:.3f} ± {rnd['std']:.3f}",
                      f"{rnd['negative_auc']:.3f} ± {rnd['std']:.3f}", "0")
    console.print(table)
    console.print(f"positive: most relevant {run.plural} removed first (a faithful map makes the probability fall fast); "
                  "negative: least relevant first.", soft_wrap=True)
    print_files(console, run.files)
