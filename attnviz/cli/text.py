"""``attnviz text``: a sentence in, every layer's and head's attention out."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import typer

from attnviz.cli import app
from attnviz.cli.common import (
    mark_random_weights, warn_left_alone,
    ALLOW_PICKLE, DEBUG, DEVICE, DEVICE_MAP, DTYPE, FORCE, FORMAT, JSON, OUT, RANDOM_WEIGHTS_OK, TRUST_REMOTE_CODE, guarded, print_json,
    quiet_libraries, warn,
)
from attnviz.cli.common import VERIFY, verification_json
from attnviz.cli.style import CMAP, DPI_OPTION, LABEL, SCALE, SIZE

#: The views ``attnviz text`` can write (``--views``).
TEXT_VIEWS = ("head", "model", "focus", "matrix")

#: Keep every layer and head in memory (for the model view) up to this many bytes.
FULL_BUDGET = 256 * 2**20


@dataclass
class TextRun:
    """What one ``attnviz text`` run produced; rendered as human output or JSON."""

    result: object  # TextAttention
    spec: object  # ViewSpec
    layer: int | None
    head: int | None
    focus: object | None = None  # Focus
    files: list[Path] = field(default_factory=list)
    save_attn: Path | None = None
    skipped: list[str] = field(default_factory=list)
    random_weights: str | None = None
    style: object | None = None  # Style
    views: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """The ``--json`` document (plain JSON types only)."""
        r = self.result
        from attnviz.analysis.select import units_for
        from attnviz.render.layout import DEFAULT_STYLE, model_reference

        style = self.style or DEFAULT_STYLE
        doc = {
            "model": model_reference(r.model_id),
            "label": style.model_label(r.model_id),
            "model_type": r.model_type,
            "backend": r.backend,
            "random_weights": self.random_weights,
            "num_layers": r.num_layers,
            "num_heads": r.num_heads,
            "tokens": list(r.tokens.tokens),
            "num_tokens": len(r.tokens),
            "dropped_tokens": r.dropped_tokens,
            "special": [i for i, s in enumerate(r.tokens.special) if s],
            "attention_kinds": {
                k: {"num_layers": m.num_layers, "num_heads": m.num_heads, "queries": m.num_queries, "keys": m.num_keys, "causal": m.causal}
                for k, m in r.attention.items()
            },
            "kv_heads": list(r.main.kv_heads) if r.main.kv_heads else None,
            "view": {"layer": self.layer, "head": self.head, "words": self.spec.words, "hide_special": self.spec.hide_special},
            "style": style.describe(),
            "views": list(self.views),
        }
        if self.spec.words:
            doc["words"] = list(units_for(r.tokens, self.spec).labels)
        if r.target_tokens is not None:
            doc["target_tokens"] = list(r.target_tokens.tokens)
        if self.focus is not None:
            f = self.focus
            doc["focus"] = {
                "token": f.text,
                "index": f.unit,
                "token_indices": list(f.token_indices),
                "kind": f.kind,
                "rule": f.describe(),
                "top": [
                    {"layer": l.layer, "head": l.head, "target": l.target_label, "target_index": l.target, "weight": l.weight}
                    for l in f.top
                ],
                "units": list(f.labels),
                "grid": f.grid(),
            }
        links = _head_view_json(self)
        if links is not None:
            doc["head_view"] = links
        doc["files"] = [str(p) for p in self.files]
        doc["save_attn"] = str(self.save_attn) if self.save_attn else None
        doc["skipped_views"] = self.skipped
        doc.update(verification_json(r))
        return doc


def _print_human(run: TextRun) -> None:
    from rich.console import Console
    from rich.table import Table

    from attnviz.analysis.select import units_for
    from attnviz.render.layout import DEFAULT_STYLE

    console = Console(highlight=False)
    r = run.result
    kinds = ", ".join(r.attention) if len(r.attention) > 1 else ""
    count = f"{len(units_for(r.tokens, run.spec))} words ({len(r.tokens)} tokens)" if run.spec.words else f"{len(r.tokens)} tokens"
    console.print(
        f"[bold]{(run.style or DEFAULT_STYLE).model_label(r.model_id)}[/bold] · {r.num_layers} layers × {r.num_heads} heads · {count}"
        + (f" · kinds: {kinds}" if kinds else "")
        + f" · backend {r.backend}"
    )
    if run.random_weights:
        console.print(f"[bold red]{run.random_weights.upper()}[/bold red]", soft_wrap=True)
    if r.main.kv_heads:
        console.print(f"grouped-query attention: {_kv_summary(r.main.kv_heads)}")
    if getattr(r.verification, "verified", False):
        console.print(r.verification.describe())
    if run.focus is not None:
        f = run.focus
        console.print(f"heads linking '{f.text}' ({f.kind} attention; target: {f.describe()}; {run.spec.describe()}):")
        table = Table()
        for col in ("layer", "head", "target", "weight"):
            table.add_column(col, justify="right" if col != "target" else "left")
        for link in f.top:
            table.add_row(str(link.layer), str(link.head), link.target_label, f"{link.weight:.3f}")
        console.print(table)
    for note in run.skipped:
        console.print(f"[yellow]skipped:[/yellow] {note}")
    if run.files or run.save_attn:
        console.print("wrote:")
        for path in run.files + ([run.save_attn] if run.save_attn else []):
            console.print(f"  {path}", soft_wrap=True)


def _kv_summary(kv_heads) -> str:
    groups: dict[int, list[int]] = {}
    for h, g in enumerate(kv_heads):
        groups.setdefault(g, []).append(h)
    return "; ".join(f"heads {hs[0]}-{hs[-1]} share KV head {g}" if len(hs) > 1 else f"head {hs[0]}: KV head {g}" for g, hs in groups.items())


def _read_text(text: Optional[str], text_file: Optional[Path]) -> str:
    from attnviz.cli.common import read_text_file
    from attnviz.errors import UsageError

    if text_file is not None:
        if text is not None:
            raise UsageError("give the text either as an argument or with --text-file, not both")
        return read_text_file(text_file)
    if text is None:
        raise UsageError("give a text, e.g. attnviz text \"The cat sat.\", or --text-file PATH")
    return text


@app.command("text")
def text_command(
    text: Optional[str] = typer.Argument(None, help="The input text (or use --text-file)."),
    model: str = typer.Option("sentence-transformers/all-MiniLM-L6-v2", "--model", "-m", help="Hub id or local folder."),
    token: Optional[str] = typer.Option(None, "--token", "-t", help="Focus token (or word, with --words): rank the heads by where it looks."),
    token_index: Optional[int] = typer.Option(None, "--token-index", help="Which occurrence of --token (0-based)."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer for the head view and matrix (0-based; default: the focus token's top head, else the last)."),
    head: Optional[int] = typer.Option(None, "--head", help="Head for the head view and matrix (0-based; default: the top head with --token, else the mean of all heads)."),
    words: bool = typer.Option(False, "--words/--subwords", help="Merge word pieces into words (to = sum, from = mean)."),
    hide_special: bool = typer.Option(False, "--hide-special", help="Drop [CLS]/[SEP]/BOS/EOS and renormalise rows."),
    target: Optional[str] = typer.Option(None, "--target", help="Decoder text for encoder-decoder models (T5, BART, Marian)."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="Read the input text from a UTF-8 file."),
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
    with guarded(debug):
        run = run_text(**locals())
        if as_json:
            print_json(run.to_json())
        else:
            _print_human(run)


def run_text(
    text, model, token, token_index, layer, head, words, hide_special, target, text_file, max_length, out, fmt,
    as_json, save_attn, half, top, direction, adjacent, device, dtype, device_map, allow_pickle, trust_remote_code,
    force=False, random_weights_ok=False, debug=False, verify=True,
    size="screen", dpi=None, label=None, cmap=None, scale="shared", views=",".join(TEXT_VIEWS),
) -> TextRun:
    """Do the work of ``attnviz text`` and return what was produced (no printing).

    Everything the config and tokenizer can tell (layer and head ranges, --max-length, the focus
    token, the output paths) is checked before the weights load; all files are written together
    at the end (:class:`attnviz.report.RunOutput`), or none.
    """
    from attnviz.errors import UsageError
    from attnviz.report import RunOutput, check_tensor_path, model_files

    from attnviz.cli.common import parse_formats

    figure_formats, html = parse_formats(fmt)
    if top < 1:
        raise UsageError("--top must be at least 1")
    from attnviz.cli.style import parse_views
    from attnviz.render.layout import Style

    chosen_views = parse_views(views, TEXT_VIEWS)
    style = Style.from_options(size, dpi, cmap, scale, label)
    content = _read_text(text, text_file)
    if not content.strip():
        raise UsageError("the text is empty" if not content else "the text is only whitespace")
    tensor_path = check_tensor_path(save_attn) if save_attn else None
    if max_length is not None and max_length < 2:
        raise UsageError(f"--max-length must be at least 2, not {max_length}")
    from attnviz.models import check_layer_head, resolve_model

    check_layer_head(resolve_model(model), layer, head, "text_config")  # milliseconds: config.json, no imports

    quiet_libraries()
    from attnviz.analysis.select import ViewSpec, find_focus
    from attnviz.capture import CapturePlan
    from attnviz.analysis.focus import analyse_focus
    from attnviz.models import LoadOptions
    from attnviz.inputs.tokens import attend_prepared, load_text_model, prepare_text

    spec = ViewSpec(words=words, hide_special=hide_special)
    options = LoadOptions(allow_pickle, trust_remote_code, device, dtype, device_map, random_weights_ok)
    tm = load_text_model(model, options, weights=False)  # config and tokenizer only: checks come first
    num_layers, num_heads = tm.num_layers, tm.num_heads  # (raises for a model without attention)
    if layer is not None and not -num_layers <= layer < num_layers:
        raise UsageError(f"--layer {layer} is out of range: this model has {num_layers} layers (0..{num_layers - 1})")
    if head is not None and not -num_heads <= head < num_heads:
        raise UsageError(f"--head {head} is out of range: this model has {num_heads} heads per layer (0..{num_heads - 1})")
    skipped: list[str] = []
    prepared = prepare_text(tm, content, target, max_length)
    info, target_info = prepared.tokens, prepared.target_tokens
    n = max(len(info), len(target_info) if target_info is not None else 0)
    full_bytes = 4 * num_layers * num_heads * n * n * (3 if tm.encoder_decoder else 1)
    keep_full = full_bytes <= FULL_BUDGET
    draws_head = "head" in chosen_views or "matrix" in chosen_views
    if not keep_full and "model" in chosen_views:
        skipped.append(f"model view: {n} tokens x {num_layers} layers x {num_heads} heads would need {full_bytes / 2**30:.1f} GiB")
    rows: tuple[int, ...] = ()
    cross_rows: tuple[int, ...] = ()
    on_target = tm.encoder_decoder and target_info is not None and len(target_info) > 1
    if token is not None:
        positions = find_focus(target_info if on_target else info, token, token_index, spec)
        cross_rows, rows = (tuple(positions), ()) if on_target else ((), tuple(positions))

    output = RunOutput(
        out, command="text", force=force, protect=model_files(tm.source.location),
        settings={"model": tm.source.model_id, "text": content[:200], "token": token, "layer": layer, "head": head,
                  "words": words, "hide_special": hide_special, "format": fmt, "size": size, "views": list(chosen_views),
                  "save_attn": str(tensor_path) if tensor_path else None},
    )
    kinds = ("encoder", "decoder", "cross") if tm.encoder_decoder else ("self",)
    focus_kind = ("cross" if on_target else kinds[0]) if token is not None else None
    output.check(_view_names(kinds, keep_full, focus_kind, figure_formats, html, chosen_views), tensor=tensor_path)

    tm = tm.with_weights()
    note = mark_random_weights(output, tm.model)
    # the head view's layer: given, else (without --token) the last; with --token it follows the ranking
    layers: frozenset[int] = frozenset()
    head_maps: frozenset = frozenset()
    follow = None
    if not keep_full and draws_head:
        # capture only what the head view and matrix draw: one head's (or the head mean's) [N, N] map
        fixed_head = None if head is None else head % num_heads
        if tm.encoder_decoder:
            if layer is not None or token is None:
                chosen = (layer if layer is not None else -1) % num_layers
                layers = frozenset({chosen, min(chosen, tm.num_decoder_layers - 1)})
        elif token is None:
            head_maps = frozenset({((layer if layer is not None else -1) % num_layers, fixed_head)})
        elif layer is not None and head is not None:
            head_maps = frozenset({(layer % num_layers, fixed_head)})
        else:  # the focus token's top head: followed layer by layer in the same pass
            from attnviz.analysis.focus import focus_rule

            rule = focus_rule(info, info, "self", token, token_index, spec, direction, adjacent)
            follow = rule.follow(None if layer is None else layer % num_layers, fixed_head)
    with output:
        writer = None
        if tensor_path is not None and not keep_full:
            writer = _open_writer(tm, prepared, output.tensor_target(tensor_path), tensor_path, half)
        collector = _html_collector(tm, prepared, rows, cross_rows) if html and not keep_full else None
        plan = CapturePlan(
            full=keep_full, layers=layers, rows=rows, cross_rows=cross_rows, need_outputs=False,
            on_layer=_both(writer.write_layer if writer is not None else None, collector), head_maps=head_maps, follow=follow,
        )
        try:
            with _progress(tm) as progress:
                result = attend_prepared(tm, prepared, plan, progress, verify=verify)
            if writer is not None:
                writer.close()
        finally:
            if writer is not None:
                writer.abort()
        if result.notice:
            warn(result.notice)
        main = result.main
        focus = analyse_focus(result, token, token_index, spec, top, direction=direction, adjacent=adjacent) if token is not None else None
        if focus is not None and focus.top and layer is None:
            # default view: the focus token's top head (of its own attention kind)
            layer = focus.top[0].layer
            head = focus.top[0].head if head is None else head
        layer = main.check_layer(layer if layer is not None else main.num_layers - 1)
        if head is not None:
            head = main.check_head(head)
        wanted = {kind: min(layer, maps.num_layers - 1) for kind, maps in result.attention.items()}
        if draws_head and len(result.attention) == 1 and not main.has_head_map(layer, head):
            # the ranking chose a head the single pass did not follow (e.g. a near tie): capture just that map
            plan = CapturePlan(head_maps=frozenset({(layer, head)}), need_outputs=False)
            with _progress(tm) as progress:
                again = attend_prepared(tm, prepared, plan, progress, verify=verify)
            result = replace(result, attention={k: replace(m, head_maps={**m.head_maps, **again.attention[k].head_maps})
                                                for k, m in result.attention.items()})
            main = result.main
        if draws_head and len(result.attention) > 1 and not all(result.attention[k].has_layer(l) for k, l in wanted.items()):
            # the focus ranking chose the layer: capture it now (the forward stops after it when it can)
            plan = CapturePlan(layers=frozenset(wanted.values()), need_outputs=False)
            with _progress(tm) as progress:
                again = attend_prepared(tm, prepared, plan, progress, verify=verify)
            result = replace(
                result,
                attention={k: replace(m, layers={**m.layers, **again.attention[k].layers}) for k, m in result.attention.items()},
            )
            main = result.main

        for figure_format in figure_formats:
            _write_views(result, spec, layer, head, focus, output, figure_format, skipped, style, chosen_views)
        if html:
            from attnviz.html import text_page

            output.page(text_page(result, focus, spec, layer, head, collector), "report")
        if tensor_path is not None and writer is None:
            _save_full(result, output.tensor_target(tensor_path), half)
    warn_left_alone(output)
    return TextRun(result, spec, layer, head, focus, list(output.files), output.tensor, skipped, note, style, chosen_views)


def _view_names(kinds, keep_full: bool, focus_kind: str | None, formats, html: bool, views=TEXT_VIEWS) -> list[str]:
    """The file names :func:`_write_views` (and the HTML report) will write, checked before loading."""
    names = []
    for fmt in formats:
        for kind in kinds:
            prefix = f"{kind}-" if len(kinds) > 1 else ""
            names += [f"{prefix}{v}.{fmt}" for v in ("head-view", "matrix") if v.split("-")[0] in views]
            if keep_full and "model" in views:
                names.append(f"{prefix}model-view.{fmt}")
            if kind == focus_kind and "focus" in views:
                names.append(f"{prefix}focus-view.{fmt}")
    return names + (["report.html"] if html else [])


@contextmanager
def _progress(tm):
    """A rich progress bar on stderr (only on a terminal), advanced after each attention layer."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    kinds = 3 if tm.encoder_decoder else 1
    with Progress(
        TextColumn("capturing attention"), BarColumn(), MofNCompleteColumn(), TextColumn("layers"), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("capture", total=tm.num_layers * kinds)
        yield lambda kind, layer: bar.advance(task)


def _write_views(result, spec, layer, head, focus, output, fmt: str, skipped: list[str], style=None,
                 views=TEXT_VIEWS) -> list[Path]:
    from attnviz.render.text import focus_view, head_view, matrix_view, model_view

    files: list[Path] = []
    multi = len(result.attention) > 1
    for kind, maps in result.attention.items():
        prefix = f"{kind}-" if multi else ""
        kind_layer = min(layer, maps.num_layers - 1)
        kind_head = head if head is None or head < maps.num_heads else None
        focus_tokens = focus.token_indices if focus is not None and focus.kind == kind else None
        if maps.has_head_map(kind_layer, kind_head):
            if "head" in views:
                fig = head_view(result, kind_layer, kind_head, spec, focus=focus_tokens, kind=kind, style=style)
                files.append(output.figure(fig, f"{prefix}head-view", fmt))
            if "matrix" in views:
                fig = matrix_view(result, kind_layer, kind_head, spec, kind=kind, focus=focus_tokens, style=style)
                files.append(output.figure(fig, f"{prefix}matrix", fmt))
        if maps.full is not None and "model" in views:
            files.append(output.figure(model_view(result, spec, kind=kind, style=style), f"{prefix}model-view", fmt))
        if focus is not None and focus.kind == kind and "focus" in views:
            files.append(output.figure(focus_view(result, focus, spec, style=style), f"{prefix}focus-view", fmt))
    return files


def _metadata(result_or_prepared, model_id: str) -> dict:
    meta = {"model": model_id, "tokens": list(result_or_prepared.tokens.tokens)}
    if result_or_prepared.target_tokens is not None:
        meta["target_tokens"] = list(result_or_prepared.target_tokens.tokens)
    return meta


def _save_full(result, path: Path, half: bool) -> Path:
    """Write the raw token-level probabilities kept in memory (short inputs)."""
    import torch

    from attnviz.report import attention_tensor_name, save_tensors

    dtype = torch.float16 if half else torch.float32
    tensors = {attention_tensor_name(k): m.full.to(dtype) for k, m in result.attention.items()}
    return save_tensors(path, tensors, {**_metadata(result, result.model_id), "backend": result.backend})


def _open_writer(tm, prepared, path: Path, final: Path, half: bool):
    """A streaming writer for long inputs: every layer goes to the (staged) file ``path`` as it is captured."""
    from attnviz.capture import attention_shapes
    from attnviz.report import AttentionWriter, attention_file_size
    from attnviz.inputs.tokens import model_inputs

    shapes = attention_shapes(tm.model, model_inputs(tm, prepared))
    dtype = "float16" if half else "float32"
    meta = _metadata(prepared, tm.source.model_id)
    warn(f"--save-attn: streaming {attention_file_size(shapes, dtype, meta) / 2**30:.2f} GiB of {dtype} attention to {final}")
    return AttentionWriter(path, shapes, dtype=dtype, metadata=meta)


def _html_collector(tm, prepared, rows, cross_rows):
    """For ``--format html`` on inputs too long to keep every map: collect the page's data layer by layer."""
    from attnviz.html.payload import TextCollector
    from attnviz.types import CROSS, ENCODER, SELF

    kind = CROSS if cross_rows else (ENCODER if tm.encoder_decoder else SELF)
    return TextCollector(prepared.tokens, prepared.target_tokens, tuple(cross_rows or rows), kind)


def _both(first, second):
    """One ``on_layer`` callback calling both (either may be None)."""
    if first is None or second is None:
        return first or second
    return lambda kind, layer, probs: (first(kind, layer, probs), second(kind, layer, probs))


def _head_view_json(run: TextRun) -> dict | None:
    """The links the head view draws (self/encoder attention): units and ``[query, key, weight]`` triples."""
    import numpy as np

    from attnviz.analysis.select import prepare
    from attnviz.render.text import LONG_TOP_K, LONG_UNITS, causal_mask, head_view_links

    r = run.result
    maps, qi, ki = r.sides(r.main.kind)
    if run.layer is None or not maps.has_head_map(run.layer, run.head):
        return None
    vm = prepare(maps.head_map(run.layer, run.head), qi, ki, run.spec)
    w = vm.attn.numpy()
    nq, nk = w.shape
    top_k = LONG_TOP_K if max(nq, nk) > LONG_UNITS else nk
    mask = causal_mask(vm.query_units, vm.key_units) if maps.causal else None
    qs, ks, vals = head_view_links(w, mask, top_k)
    return {
        "layer": run.layer, "head": run.head, "kind": maps.kind,
        "queries": list(vm.query_units.labels), "keys": list(vm.key_units.labels),
        "top_k": top_k if top_k < nk else None, "min_weight": None if top_k < nk else 0.005,
        "links": [[int(q), int(k), round(float(v), 6)] for q, k, v in zip(qs, ks, np.asarray(vals))],
    }
