"""``attnviz text``: options in, :func:`attnviz.pipelines.text.run`, the summary (or ``--json``) out."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, VERIFY,
    model_request, output_request, print_files, print_methods, run_command, style_request,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE
from attnviz.models import DEFAULT_TEXT_MODEL

#: The views ``attnviz text`` can write (kept in step with attnviz.pipelines.common.TEXT_VIEWS; no torch import here).
TEXT_VIEWS = ("head", "model", "focus", "matrix")


@app.command("text")
def text_command(
    text: Optional[str] = typer.Argument(None, help="The input text (or use --text-file)."),
    model: str = typer.Option(DEFAULT_TEXT_MODEL, "--model", "-m", help="Hub id, local folder or .gguf file (SmolLM2-135M-Instruct: the installed GGUF)."),
    token: Optional[str] = typer.Option(None, "--token", "-t", help="Focus token (or word, with --words): rank the heads by where it looks."),
    token_index: Optional[int] = typer.Option(None, "--token-index", help="Which occurrence of --token (0-based)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer for the head view and matrix (0-based; default: the focus token's top head, else the last)."),
    head: Optional[int] = typer.Option(None, "--head", help="Head for the head view and matrix (0-based; default: the top head with --token, else the mean of all heads)."),
    words: bool = typer.Option(False, "--words/--subwords", help="Merge word pieces into words (to = sum, from = mean)."),
    hide_special: bool = typer.Option(False, "--hide-special", help="Drop [CLS]/[SEP]/BOS/EOS and renormalise rows."),
    target: Optional[str] = typer.Option(None, "--target", help="Decoder text for encoder-decoder models (T5, BART, Marian)."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="Read the input text from a UTF-8 file (- for standard input)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate the input to this many tokens."),
    out: Path = OUT,
    fmt: str = FORMAT,
    as_json: bool = JSON,
    save_attn: Optional[Path] = typer.Option(None, "--save-attn", help="Write raw attention [L, H, Q, K] to PATH.safetensors."),
    half: bool = typer.Option(False, "--half", help="With --save-attn: store float16 instead of float32."),
    top: int = typer.Option(10, "--top", help="Heads listed for --token."),
    direction: str = typer.Option("back", "--direction", help="--token links to: back (earlier tokens, as antecedents), forward or both."),
    adjacent: bool = typer.Option(False, "--adjacent/--no-adjacent", help="Count links to the neighbouring tokens (previous/next-token heads)."),
    size: str = SIZE,
    dpi: Optional[int] = DPI_OPTION,
    label: Optional[str] = LABEL,
    cmap: Optional[str] = CMAP,
    scale: str = SCALE,
    views: str = typer.Option(",".join(TEXT_VIEWS), "--views", help="Views to write: any of head,model,focus,matrix (comma-separated)."),
    method: Optional[str] = typer.Option(None, "--method", help="Also draw these methods for the --token's row (or [CLS]/the last token): attention, rollout, grad-attention, relevance (Chefer et al. 2021), value-norm (Kobayashi et al. 2020); comma-separated or 'all'."),
    global_tokens: Optional[str] = typer.Option(None, "--global", help="Longformer / LED: tokens with global attention, as 0-based positions or tokens (every occurrence), comma-separated (default: the first token)."),
    window_at: Optional[int] = typer.Option(None, "--window-at", help="Longformer / LED long documents: also draw the attention matrix around this token position (0-based)."),
    target_class: Optional[int] = typer.Option(None, "--target-class", help="Class (0-based) a classifier's gradient methods explain (default: the top class)."),
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
    """Attention of a text model: head view, model view, focus view and attention matrix."""
    options = dict(locals())

    def produce():
        from attnviz.pipelines.text import TextRequest, run

        request = TextRequest(
            text=text, token=token, token_index=token_index, layer=layer, head=head, words=words, hide_special=hide_special,
            target=target, text_file=text_file, max_length=max_length, half=half, top=top, direction=direction,
            adjacent=adjacent, views=views, method=method or (), target_class=target_class, global_tokens=global_tokens, window_at=window_at,
            model=model_request(**options), output=output_request(**options),
            style=style_request(**options),
        )
        with _progress() as progress:
            return run(request, progress)

    run_command(debug, as_json, produce, _print_human)


@contextmanager
def _progress():
    """A rich progress bar on stderr (only on a terminal), advanced after each captured attention layer."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("capturing attention"), BarColumn(), TextColumn("{task.completed} layers"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("capture", total=None)
        yield lambda kind, layer: bar.advance(task)


def _print_human(run) -> None:
    if hasattr(run, "doc"):  # a long document (attnviz.pipelines.longdoc.LongDocRun)
        return _print_long(run)
    _print_dense(run)
    return None


def _print_long(run) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    d = run.doc
    layout = (f"block-sparse, blocks of {d.block_size}, {d.band.num_random_blocks} random" if d.block_size
              else f"sliding window ±{d.half_width}")
    console.print(f"[bold]{escape(run.style.model_label(d.model_id))}[/bold] · {d.num_layers} layers × {d.num_heads} heads · "
                  f"{d.n} tokens · {layout} · kept {d.band.nbytes / 2**20:,.1f} MiB")
    if run.random_weights:
        console.print(f"[bold red]{escape(run.random_weights.upper())}[/bold red]")
    c = run.checks
    console.print(f"checked: rows sum to 1 (largest error {c.get('row_sum_max_error', 0):.1e}); the first "
                  f"{c['probe_tokens']} tokens equal {c['reference']} (largest difference {c['probe_max_abs_diff']:.1e})")
    doc = run.to_json()
    if "focus" in doc:
        f = doc["focus"]
        console.print(f"strongest keys of '{escape(f['token'])}' (token {f['token_indices'][0]}), head mean, per layer:")
        table = Table()
        side = bool(doc["side_keys"])  # LongT5: the transient-global summaries, not tokens
        share = "on_side_keys" if side else "on_global"
        for col in ("layer", "on global blocks" if side else "on global tokens", "top keys"):
            table.add_column(col, justify="left" if col == "top keys" else "right")
        for row in f["layers"]:
            table.add_row(str(row["layer"]), f"{row[share]:.3f}",
                          escape(", ".join(f"{t['token']} ({t['index']}) {t['weight']:.3f}" for t in row["top"][:3])))
        console.print(table)
    print_files(console, run.files, run.save_attn)


def _print_dense(run) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from attnviz.analysis.select import units_for

    console = Console(highlight=False, soft_wrap=True)
    r = run.result
    kinds = ", ".join(r.attention) if len(r.attention) > 1 else ""
    count = f"{len(units_for(r.tokens, run.spec))} words ({len(r.tokens)} tokens)" if run.spec.words else f"{len(r.tokens)} tokens"
    console.print(
        f"[bold]{escape(run.style.model_label(r.model_id))}[/bold] · {r.num_layers} layers × {r.num_heads} heads · {count}"
        + (f" · kinds: {kinds}" if kinds else "") + f" · backend {r.backend}"
        + (f" · weights dequantised from a {run.provenance['quantization']} GGUF" if run.provenance.get("quantization") else "")
    )
    if run.random_weights:
        console.print(f"[bold red]{escape(run.random_weights.upper())}[/bold red]")
    if r.main.kv_heads:
        console.print(f"grouped-query attention: {_kv_summary(r.main.kv_heads)}")
    if getattr(r.verification, "verified", False):
        console.print(r.verification.describe())
    if run.focus is not None:
        f = run.focus
        console.print(f"heads linking '{escape(f.text)}' ({f.kind} attention; target: {f.describe()}; {run.spec.describe()}):")
        if f.fallback:
            console.print(f"[yellow]{escape(f.fallback)}[/yellow]")
        table = Table()
        for col in ("layer", "head", "target", "weight"):
            table.add_column(col, justify="right" if col != "target" else "left")
        for link in f.top:
            table.add_row(str(link.layer), str(link.head), escape(link.target_label), f"{link.weight:.3f}")
        console.print(table)
    for note in run.skipped:
        console.print(f"[yellow]skipped:[/yellow] {escape(note)}")
    print_methods(console, run.explanation)
    print_files(console, run.files, run.save_attn)


def _kv_summary(kv_heads) -> str:
    groups: dict[int, list[int]] = {}
    for h, g in enumerate(kv_heads):
        groups.setdefault(g, []).append(h)
    return "; ".join(f"heads {hs[0]}-{hs[-1]} share KV head {g}" if len(hs) > 1 else f"head {hs[0]}: KV head {g}" for g, hs in groups.items())
