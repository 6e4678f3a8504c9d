"""``attnviz generate``: let a decoder write, and show where each generated token attended."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    mark_random_weights, warn_left_alone,
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, VERIFY, guarded,
    print_json, quiet_libraries, warn,
)
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE


@dataclass
class GenerateRun:
    """What one ``attnviz generate`` run produced; rendered as human output or JSON."""

    result: object  # GenerationAttention
    links: list  # per step: list[Link] (self-attention)
    source_links: list | None  # per step: list[Link] (cross-attention), encoder-decoder only
    layer: int | None
    head: int | None
    fusion: str
    step: int | None = None
    focus: object | None = None  # Focus
    files: list[Path] = field(default_factory=list)
    save_attn: Path | None = None
    random_weights: str | None = None
    style: object | None = None  # Style

    def to_json(self) -> dict:
        """The ``--json`` document (plain JSON types only)."""
        from attnviz.analysis.generation import CROSS_RULE, SELF_RULE
        from attnviz.render.layout import DEFAULT_STYLE

        r = self.result
        style = self.style or DEFAULT_STYLE
        steps = []
        for i in range(r.num_generated):
            entry = {
                "step": i, "token": r.generated[i], "id": r.generated_ids[i], "probability": round(r.probabilities[i], 6),
                "top": [link.to_dict() for link in self.links[i]],
            }
            if self.source_links is not None:
                entry["top_source"] = [link.to_dict() for link in self.source_links[i]]
            steps.append(entry)
        doc = {
            "model": r.model_id,
            "label": style.model_label(r.model_id),
            "model_type": r.model_type,
            "backend": r.backend,
            "encoder_decoder": r.encoder_decoder,
            "num_layers": r.num_layers,
            "num_heads": r.num_heads,
            "kv_heads": list(r.kv_heads) if r.kv_heads else None,
            "prompt": {"text": r.prompt.text, "tokens": list(r.prompt.tokens), "ids": list(r.prompt_ids)},
            "prompt_length": r.prompt_length,
            "context_tokens": list(r.context),
            "generated": {"text": r.text, "tokens": list(r.generated), "ids": list(r.generated_ids),
                          "probabilities": [round(p, 6) for p in r.probabilities]},
            "stopped_at_eos": r.stopped_at_eos,
            "sampling": dict(r.sampling),
            "rule": {"top": SELF_RULE, "top_source": CROSS_RULE if self.source_links is not None else None},
            "view": {"layer": self.layer, "head": self.head, "fusion": self.fusion if self.head is None else None},
            "style": style.describe(),
            "steps": steps,
        }
        if self.focus is not None:
            f = self.focus
            doc["focus"] = {
                "step": self.step, "token": f.text, "kind": f.kind, "rule": f.describe(),
                "top": [{"layer": l.layer, "head": l.head, "target": l.target_label, "target_index": l.target, "weight": l.weight}
                        for l in f.top],
            }
        doc["files"] = [str(p) for p in self.files]
        doc["save_attn"] = str(self.save_attn) if self.save_attn else None
        doc["notice"] = r.notice
        doc["random_weights"] = self.random_weights
        return doc


def _print_human(run: GenerateRun) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from attnviz.analysis.generation import CROSS_RULE, SELF_RULE
    from attnviz.render.layout import DEFAULT_STYLE

    console = Console(highlight=False)
    r = run.result
    how = "sampled" if r.sampling.get("do_sample") else "greedy"
    name = escape((run.style or DEFAULT_STYLE).model_label(r.model_id))
    console.print(
        f"[bold]{name}[/bold] · {r.num_layers} layers × {r.num_heads} heads · prompt {r.prompt_length} tokens"
        f" · {r.num_generated} generated ({how}{', stopped at EOS' if r.stopped_at_eos else ''}) · backend {r.backend}"
    )
    console.print(f"[bold]generated:[/bold] {escape(r.text)}", soft_wrap=True)
    cross = run.source_links is not None
    links = run.source_links if cross else run.links
    where = "every layer and head" if run.layer is None and run.head is None else (
        f"layer {run.layer}, " + ("head mean" if run.head is None else f"head {run.head}") if run.layer is not None
        else f"head {run.head} in every layer")
    console.print(f"each generated token's {CROSS_RULE if cross else SELF_RULE} ({where}):")
    table = Table()
    for col, justify in (("step", "right"), ("token", "left"), ("p", "right"), ("attends most to", "left"), ("weight", "right"),
                         ("from", "left")):
        table.add_column(col, justify=justify)
    for i in range(r.num_generated):
        best = links[i][0] if links[i] else None
        table.add_row(
            str(i), escape(repr(r.generated[i])[1:-1]), f"{r.probabilities[i]:.3f}",
            escape(f"{best.target_label} ({best.target})") if best else "–", f"{best.weight:.3f}" if best else "",
            best.source() if best else "",
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
    if run.files or run.save_attn:
        console.print("wrote:")
        for path in run.files + ([run.save_attn] if run.save_attn else []):
            console.print(f"  {path}", soft_wrap=True)


@app.command("generate")
def generate_command(
    prompt: str = typer.Argument(..., help="The prompt (the source text for encoder-decoder models)."),
    model: str = typer.Option(..., "--model", "-m", help="Hub id or local folder of a generative model (causal LM or seq2seq)."),
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
    with guarded(debug):
        run = run_generate(**locals())
        if as_json:
            print_json(run.to_json())
        else:
            _print_human(run)


def run_generate(
    prompt, model, max_new_tokens, sample, temperature, top_p, seed, chat, token, token_index, step, layer, head, fusion, top,
    out, fmt, as_json, save_attn, device, dtype, device_map, allow_pickle, trust_remote_code, force=False,
    random_weights_ok=False, verify=True, debug=False, size="screen", dpi=None, label=None, cmap=None, scale="shared",
) -> GenerateRun:
    """Do the work of ``attnviz generate`` and return what was produced (no printing).

    All files are written together at the end (:class:`attnviz.report.RunOutput`), or none.
    """
    from attnviz.errors import UsageError
    from attnviz.render.layout import Style
    from attnviz.report import RunOutput, check_tensor_path, model_files

    style = Style.from_options(size, dpi, cmap, scale, label)
    from attnviz.cli.common import parse_formats

    formats, html = parse_formats(fmt)
    if top < 1:
        raise UsageError("--top must be at least 1")
    if token is not None and step is not None:
        raise UsageError("give either --token or --step, not both")
    if fusion not in ("mean", "max"):
        raise UsageError(f"--fusion must be one of mean, max, not '{fusion}'")
    if not sample and (temperature != 1.0 or top_p != 1.0 or seed is not None):
        raise UsageError("--temperature, --top-p and --seed need --sample (decoding is greedy without it)")
    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty" if not prompt else "the prompt is only whitespace")
    tensor_path = check_tensor_path(save_attn) if save_attn else None

    quiet_libraries()
    from attnviz.analysis.generation import candidates, strongest_links
    from attnviz.generate import analyse_step_focus, attend_generation, find_step, load_generation_model
    from attnviz.models import LoadOptions, load_config, resolve_model

    output = RunOutput(
        out, command="generate", force=force, protect=model_files(resolve_model(model).location),
        settings={"model": model, "prompt": prompt[:200], "max_new_tokens": max_new_tokens, "sample": sample,
                  "temperature": temperature, "top_p": top_p, "seed": seed, "format": fmt, "size": size, "dpi": dpi,
                  "label": label, "cmap": cmap, "scale": scale, "save_attn": str(tensor_path) if tensor_path else None},
    )
    options = LoadOptions(allow_pickle, trust_remote_code, device, dtype, device_map, random_weights_ok)
    _check_layer_head(model, options, layer, head)  # from the config, before any weights load
    names = ["generation-map", "sink-share"]
    if getattr(load_config(resolve_model(model), options), "is_encoder_decoder", False):
        names.append("cross-map")
    if token is not None or step is not None:
        names += ["focus-view", "head-view"]
    output.check([f"{n}.{f}" for f in formats for n in names] + (["report.html"] if html else []), tensor=tensor_path)
    tm = load_generation_model(model, options)
    note = mark_random_weights(output, tm.model)
    with _progress(max_new_tokens) as progress:
        result = attend_generation(prompt, tm, max_new_tokens=max_new_tokens, sample=sample, temperature=temperature,
                                   top_p=top_p, seed=seed, chat=chat, progress=progress, verify=verify)
    if result.notice:
        warn(result.notice)
    candidates(result, layer, head)  # checks --layer/--head
    links = strongest_links(result, layer, head, top)
    source_links = strongest_links(result, layer, head, top, cross=True) if result.cross_attentions is not None else None
    chosen = find_step(result, token, token_index) if token is not None else (result.check_step(step) if step is not None else None)
    focus = analyse_step_focus(result, chosen)[1] if chosen is not None else None
    with output:
        files = [p for f in formats for p in _write_views(result, layer, head, fusion, chosen, output, f, style)]
        if html:
            from attnviz.html import generation_page

            files.append(output.page(generation_page(result, layer, head), "report"))
        if tensor_path is not None:
            _save(result, output.tensor_target(tensor_path))
    warn_left_alone(output)
    return GenerateRun(result, links, source_links, layer, head, fusion, chosen, focus, files, output.tensor, note, style)


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


def _write_views(result, layer, head, fusion, step, output, fmt: str, style=None) -> list[Path]:
    from attnviz.analysis.select import ViewSpec
    from attnviz.generate import analyse_step_focus
    from attnviz.render.generate import generation_head_view, generation_map, sink_view
    from attnviz.render.layout import DEFAULT_STYLE
    from attnviz.render.text import focus_view

    files = [output.figure(generation_map(result, layer, head, fusion, style=style), "generation-map", fmt)]
    if result.cross_attentions is not None:
        files.append(output.figure(generation_map(result, layer, head, fusion, cross=True, style=style), "cross-map", fmt))
    files.append(output.figure(sink_view(result, style=style), "sink-share", fmt))
    if step is not None:
        text, focus = analyse_step_focus(result, step)
        files.append(output.figure(focus_view(text, focus, ViewSpec(), style=style or DEFAULT_STYLE), "focus-view", fmt))
        files.append(output.figure(generation_head_view(result, step, layer, head, style=style), "head-view", fmt))
    return files


def _save(result, path: Path) -> Path:
    """``attentions`` float32 [L, H, generated, key] (+ ``cross_attentions``) with the token metadata."""
    from attnviz.generate import full_sequence
    from attnviz.report import save_tensors

    tensors = {"attentions": result.attentions}
    if result.cross_attentions is not None:
        tensors["cross_attentions"] = result.cross_attentions
    meta = {
        "model": result.model_id,
        "backend": result.backend,
        "input_ids": list(full_sequence(result)),
        "prompt_length": result.prompt_length,
        "tokens": list(result.prompt.tokens) + list(result.generated),
        "key_tokens": list(result.key_labels),
        "context_length": result.context_length,
        "probabilities": list(result.probabilities),
    }
    return save_tensors(path, tensors, meta)


def _check_layer_head(model: str, options, layer, head) -> None:
    """``--layer``/``--head`` against the config (layers and heads of the decoder), before the weights load."""
    from attnviz.errors import UsageError
    from attnviz.models import load_config, resolve_model
    from attnviz.inputs.tokens import TextModel

    if layer is None and head is None:
        return
    source = resolve_model(model)
    spec = TextModel(source, None, None, 0, load_config(source, options))
    layers, heads = spec.num_decoder_layers, spec.num_heads
    if layer is not None and not -layers <= layer < layers:
        raise UsageError(f"--layer {layer} is out of range: this model has {layers} layers (0..{layers - 1})")
    if head is not None and not -heads <= head < heads:
        raise UsageError(f"--head {head} is out of range: this model has {heads} heads per layer (0..{heads - 1})")
