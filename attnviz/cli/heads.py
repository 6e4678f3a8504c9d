"""``attnviz heads``: options in, :func:`attnviz.pipelines.heads.run`, the summary (or ``--json``) out."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, VERIFY,
    model_request, output_request, print_files, run_command, style_request,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE
from attnviz.models import DEFAULT_TEXT_MODEL


@app.command("heads")
def heads_command(
    corpus: Path = typer.Argument(..., help="Text file (one example per line), or .jsonl/.csv/.parquet with a text column."),
    model: str = typer.Option(DEFAULT_TEXT_MODEL, "--model", "-m", help="Hub id, local folder or .gguf file (SmolLM2-135M-Instruct: the installed GGUF)."),
    column: str = typer.Option("text", "--column", help="Text column of a JSONL/CSV/Parquet corpus."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many (non-blank) examples."),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples per forward pass (padded batch)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate examples to this many tokens."),
    words: bool = typer.Option(False, "--words/--subwords", help="Count words (pieces merged: to = sum, from = mean) instead of tokens."),
    probes: Optional[Path] = typer.Option(None, "--probes", help='JSONL of {"text", "token", "target", "token_index"?}: score each head\'s link.'),
    cluster_queries: int = typer.Option(4, "--cluster-queries", help="Head map: query units sampled per sampled example."),
    cluster_every: Optional[int] = typer.Option(None, "--cluster-every", help="Head map: sample one example in this many (by a hash of its text; 1 = all) [default: 8; 1 below 64 examples]."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data actor pool)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: join this Ray cluster (e.g. auto, ray://host:10001)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="With --engine ray: actors, each loading the model once (default: from the cluster's CPUs, at most 2)."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="With --engine ray: GPUs per actor."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="With --engine ray: CPUs (and torch threads) per actor (default: what the cluster leaves, at most 1)."),
    top: int = typer.Option(3, "--top", help="Heads listed per statistic in the terminal table."),
    out: Path = OUT,
    fmt: str = FORMAT,
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
    verify: bool = VERIFY,
    debug: bool = DEBUG,
) -> None:
    """Which heads do what across a corpus: attention to [CLS]/[SEP]/punctuation, entropy, positional heads, probes, head map."""
    options = dict(locals())

    def produce():
        from attnviz.pipelines.heads import HeadsRequest, run

        request = HeadsRequest(
            corpus, column=column, limit=limit, batch_size=batch_size, max_length=max_length, words=words, probes=probes,
            cluster_queries=cluster_queries, cluster_every=cluster_every, engine=engine, address=address, workers=workers,
            gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, top=top, model=model_request(**options),
            output=output_request(**options), style=style_request(**options),
        )
        with _progress() as progress:
            return run(request, progress)

    run_command(debug, as_json, produce, _print_human)


@contextmanager
def _progress():
    """A rich progress bar on stderr (only on a terminal): examples done, tokens/s, elapsed and ETA."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    start = time.perf_counter()
    with Progress(
        TextColumn("heads"), BarColumn(), MofNCompleteColumn(), TextColumn("examples ·"), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("heads", total=None, rate="")
        tokens = [0]

        def advance(part) -> None:
            tokens[0] += part.tokens
            rate = tokens[0] / max(1e-9, time.perf_counter() - start)
            bar.update(task, advance=part.examples, rate=f"{rate:,.0f} tokens/s")

        yield advance


def _print_human(run) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from attnviz.analysis.headstats import LABELS, STATISTICS

    console = Console(highlight=False, soft_wrap=True)
    result, top = run.result, run.top
    s = result.sums
    console.print(
        f"[bold]{escape(run.style.model_label(result.model_id))}[/bold] · {result.num_layers} layers × {result.num_heads} heads · {s.examples:,} examples, "
        f"{s.tokens:,} tokens · statistics over {'words' if result.settings.words else 'tokens'} · engine {result.engine} · backend {result.backend}"
        + (f" · weights dequantised from a {run.provenance['quantization']} GGUF"
           if run.provenance and run.provenance.get("quantization") else "")
    )
    table = Table(title="most distinctive heads per statistic")
    table.add_column("statistic")
    table.add_column("mean of heads", justify="right")
    table.add_column(f"top {top} heads (layer, head: value)")
    names = list(STATISTICS) + (["probe_accuracy"] if result.probes is not None else [])
    for name in names:
        values = result.stats[name] if name in result.stats else result.probes.accuracy
        label, unit = LABELS[name]
        order = "lowest" if name in ("entropy", "entropy_ratio") else "highest"
        heads = ", ".join(f"L{l} H{h}: {v:.3f}" for l, h, v in result.distinctive(name, top))
        table.add_row(f"{name} ({order})" + (f" [{unit}]" if unit else ""), f"{float(values[~(values != values)].mean()):.3f}", heads)
    console.print(table)
    if result.probes is not None:
        b = result.probes.baselines
        console.print(f"probes: {len(result.probes.probes)}; baselines: most recent earlier word {b['recent_word']:.3f}, "
                      f"first word {b['first_word']:.3f}")
    print_files(console, run.files)
