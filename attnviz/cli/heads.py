"""``attnviz heads``: per-head statistics over a corpus, on one machine or a Ray cluster."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    mark_random_weights, warn_left_alone,
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, VERIFY, guarded, print_json,
    quiet_libraries, warn,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE


@app.command("heads")
def heads_command(
    corpus: Path = typer.Argument(..., help="Text file (one example per line), or .jsonl/.csv/.parquet with a text column."),
    model: str = typer.Option("sentence-transformers/all-MiniLM-L6-v2", "--model", "-m", help="Hub id or local folder."),
    column: str = typer.Option("text", "--column", help="Text column of a JSONL/CSV/Parquet corpus."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many (non-blank) examples."),
    batch_size: int = typer.Option(32, "--batch-size", help="Examples per forward pass (padded batch)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate examples to this many tokens."),
    words: bool = typer.Option(False, "--words/--subwords", help="Count words (pieces merged: to = sum, from = mean) instead of tokens."),
    probes: Optional[Path] = typer.Option(None, "--probes", help='JSONL of {"text", "token", "target", "token_index"?}: score each head\'s link.'),
    cluster_queries: int = typer.Option(4, "--cluster-queries", help="Head map: query units sampled per sampled example."),
    cluster_every: int = typer.Option(8, "--cluster-every", help="Head map: sample one example in this many (by a hash of its text; 1 = all)."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data actor pool)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: join this Ray cluster (e.g. auto, ray://host:10001)."),
    workers: int = typer.Option(2, "--workers", help="With --engine ray: actors, each loading the model once."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="With --engine ray: GPUs per actor."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="With --engine ray: CPUs (and torch threads) per actor."),
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
    with guarded(debug):
        result, files, style = run_heads(**locals())
        if as_json:
            print_json(result.to_json(files, style))
        else:
            _print_human(result, files, top, style)


def run_heads(
    corpus, model, column, limit, batch_size, max_length, words, probes, cluster_queries, cluster_every, engine, address, workers,
    gpus_per_worker, cpus_per_worker, top, out, fmt, as_json, device, dtype, device_map, allow_pickle, trust_remote_code,
    force=False, random_weights_ok=False, debug=False, size="screen", dpi=None, label=None, cmap=None, scale="shared",
    verify=True,
):
    """Do the work of ``attnviz heads``; returns ``(HeadsResult, files written, Style)`` (no printing).

    All files are written together at the end (:class:`attnviz.report.RunOutput`), or none.
    """
    from attnviz.errors import UsageError
    from attnviz.render.layout import Style
    from attnviz.report import RunOutput, model_files

    style = Style.from_options(size, dpi, cmap, scale, label)
    from attnviz.cli.common import parse_formats

    formats, html = parse_formats(fmt)
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine must be local or ray, not '{engine}'")
    if top < 1:
        raise UsageError("--top must be at least 1")
    if engine == "local" and (address or workers != 2 or gpus_per_worker or cpus_per_worker != 1.0):
        raise UsageError("--address, --workers, --gpus-per-worker and --cpus-per-worker are for --engine ray")
    from attnviz.inputs.corpus import count_examples, iter_batches, open_corpus
    from attnviz.heads import BatchRunner, HeadsResult, HeadsSettings, read_probes, run_local, run_probes, run_ray

    settings = HeadsSettings(words=words, batch_size=batch_size, max_length=max_length, cluster_queries=cluster_queries,
                             cluster_every=cluster_every, limit=limit, verify=verify)
    settings.check()
    source = open_corpus(corpus, column)
    probe_list = read_probes(probes) if probes is not None else None
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UsageError("--engine ray needs Ray Data: pip install 'attnviz[ray]'") from None

    quiet_libraries()
    from attnviz.models import LoadOptions
    from attnviz.inputs.tokens import load_text_model

    from attnviz.analysis.headstats import STATISTICS

    options = LoadOptions(allow_pickle, trust_remote_code, device, dtype, device_map, random_weights_ok)
    tm = load_text_model(model, options, weights=False)
    output = RunOutput(
        out, command="heads", force=force, protect=model_files(tm.source.location),
        settings={"model": tm.source.model_id, "corpus": str(corpus), "column": column, "limit": limit, "batch_size": batch_size,
                  "max_length": max_length, "words": words, "probes": str(probes) if probes else None, "engine": engine,
                  "format": fmt, "size": size, "dpi": dpi, "label": label, "cmap": cmap, "scale": scale},
    )
    stats = list(STATISTICS) + (["probe_accuracy"] if probe_list else [])
    output.check([f"{stem}.{f}" for f in formats for stem in [f"heads-{n.replace('_', '-')}" for n in stats] + ["head-map"]]
                 + ["heads.parquet", "heads.json"] + (["report.html"] if html else []))
    tm = tm.with_weights()
    
    mark_random_weights(output, tm.model)
    runner = BatchRunner(tm, settings)
    if runner.verification.notice:
        warn(runner.verification.notice)
    total = count_examples(source)
    total = min(total, limit) if total is not None and limit is not None else total
    with _progress(total) as progress:
        if engine == "local":
            sums = run_local(runner, iter_batches(source, batch_size, limit), progress)
        else:
            sums = run_ray(model, options, source, settings, runner.num_layers, runner.num_heads, address=address,
                           workers=workers, gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker, progress=progress)
    if sums.truncated:
        warn(f"{sums.truncated} examples were longer than {runner.limit} tokens and were truncated")
    probe_result = run_probes(tm, probe_list, words) if probe_list else None
    result = HeadsResult.build(runner, sums, str(corpus), engine, probe_result)
    with output:
        files = _write(result, output, formats, style, html)
    warn_left_alone(output)
    return result, files, style


def _write(result, output, formats: list[str], style=None, html: bool = False) -> list[Path]:
    from attnviz.analysis.headstats import STATISTICS
    from attnviz.render.headstats import head_map_view, statistic_view
    from attnviz.report import write_json, write_parquet

    files: list[Path] = []
    names = list(STATISTICS) + (["probe_accuracy"] if result.probes is not None else [])
    for fmt in formats:
        for name in names:
            fig = statistic_view(result, name, style=style)
            files.append(output.figure(fig, f"heads-{name.replace('_', '-')}", fmt))
        files.append(output.figure(head_map_view(result, style=style), "head-map", fmt))
    if html:
        from attnviz.html.headstats import heads_page

        files.append(output.page(heads_page(result, style), "report"))
    staged = output.path("heads.parquet")
    write_parquet(staged.parent, staged.name, result.table(), {"model": result.model_id, "corpus": result.corpus})
    files.append(output.out_dir / "heads.parquet")
    files.append(output.out_dir / "heads.json")
    staged = output.path("heads.json")
    write_json(staged.parent, staged.name, result.to_json(files, style))
    return files


@contextmanager
def _progress(total: int | None):
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
        task = bar.add_task("heads", total=total, rate="")
        tokens = [0]

        def advance(part) -> None:
            tokens[0] += part.tokens
            rate = tokens[0] / max(1e-9, time.perf_counter() - start)
            bar.update(task, advance=part.examples, rate=f"{rate:,.0f} tokens/s")

        yield advance


def _print_human(result, files: list[Path], top: int, style=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from attnviz.analysis.headstats import STATISTICS
    from attnviz.render.headstats import LABELS
    from attnviz.render.layout import DEFAULT_STYLE

    console = Console(highlight=False)
    s = result.sums
    console.print(
        f"[bold]{(style or DEFAULT_STYLE).model_label(result.model_id)}[/bold] · {result.num_layers} layers × {result.num_heads} heads · {s.examples:,} examples, "
        f"{s.tokens:,} tokens · {'words' if result.settings.words else 'tokens'} · engine {result.engine} · backend {result.backend}"
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
    console.print("wrote:")
    for path in files:
        console.print(f"  {path}", soft_wrap=True)
