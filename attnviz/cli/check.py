"""``attnviz check MODEL``: is attnviz's capture exact on this model? (the comparison with eager, as a table)."""

from __future__ import annotations

from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, JSON, TRUST_REMOTE_CODE, model_request, run_command

#: Exit status when some attention map differs from eager by more than the tolerance (attnviz.pipelines.check.NOT_EXACT).
NOT_EXACT = 6


def _fmt_diff(d: float) -> str:
    return "inf (shapes differ)" if d == float("inf") else f"{d:.1e}"


def _print_human(report) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    proven = "on the list attnviz's tests prove exact" if report.proven else "not on the list attnviz's tests prove exact"
    dequantised = f" · weights dequantised from a {report.quantization} GGUF" if report.quantization else ""
    console.print(f"[bold]{report.model_id}[/bold] · model type {report.model_type} ({proven}) · {report.dtype}{dequantised}",
                  soft_wrap=True)
    note = " (the reference itself; checked: rows sum to 1, causal masks applied)" if report.backend == "eager" else ""
    console.print(f"backend chosen: {report.backend}{note}", soft_wrap=True)
    if report.prefix is not None:
        names = ", ".join(report.prefix) or "none"
        console.print(f"prefix tokens: {len(report.prefix)} ({names})")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    vision = report.prefix is not None
    for col in ("input", "kind", "layers×heads", "query×key") + (("grid",) if vision else ()) + ("causal", "sliding", "max |Δ|"):
        table.add_column(col, justify="left" if col in ("input", "kind") else "right", no_wrap=True)
    for r in report.rows:
        cells = [r.input, r.kind, f"{r.num_layers}×{r.num_heads}", f"{r.queries}×{r.keys}"]
        if vision:
            cells.append(f"{r.grid[0]}×{r.grid[1]}" if r.grid else "-")
        cells += ["yes" if r.causal else "no", f"{r.sliding_layers}/{r.num_layers}" if r.sliding_layers else "-", _fmt_diff(r.max_abs_diff) if r.compared else "is eager"]
        table.add_row(*cells)
    console.print(table)
    console.print("sliding: layers in which a sliding-window or local mask was seen; max |Δ|: max abs difference from eager", soft_wrap=True)
    if report.exact:
        console.print(f"exact: every attention probability equals eager output_attentions within {report.tolerance:g}")
    else:
        console.print(
            f"[red]NOT exact[/red]: max abs difference {_fmt_diff(report.max_abs_diff)} > tolerance {report.tolerance:g} "
            f"(exit {NOT_EXACT}); attnviz text/image verify this model type at run time and fall back to eager",
            soft_wrap=True,
        )


@app.command("check")
def check_command(
    model: str = typer.Argument(..., help="Hub id, local folder or .gguf file of a text, vision, detection or speech model."),
    as_json: bool = JSON,
    device: str = DEVICE,
    dtype: str = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    allow_pickle: bool = ALLOW_PICKLE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
    debug: bool = DEBUG,
) -> None:
    """Compare attnviz's capture with the model's own eager attention on built-in inputs.

    Exit 0 if every attention map is equal within the tolerance (1e-5 in float32),
    6 if not; 3 if the model cannot be loaded or cannot run eager attention.
    """
    options = dict(locals())
    outcome = {}

    def produce():
        from attnviz.pipelines.check import CheckRequest, run

        outcome["report"] = report = run(CheckRequest(model_request(**options)))
        return report

    run_command(debug, as_json, produce, _print_human)
    if outcome["report"].exit_code:
        raise typer.Exit(outcome["report"].exit_code)
