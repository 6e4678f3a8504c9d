"""``attnviz text`` as a library call: a text in, every layer's and head's attention, the focus token's links and
the figures out.

::

    from attnviz.pipelines.text import TextRequest, run
    from attnviz.pipelines.common import OutputRequest

    run_ = run(TextRequest("The animal didn't cross the street because it was too tired.", token="it",
                           output=OutputRequest(out="figures")))
    run_.focus.top[0]          # HeadLink(layer=3, head=1, target=2, target_label='animal', weight=0.677...)
    run_.files                 # (Path('figures/head-view.png'), ...)
    run_.to_json()             # what `attnviz text ... --json` prints

Everything the config, the tokenizer and the text can tell (layer and head ranges, ``--max-length``,
the focus token, the output paths) is checked before the weights load; all files are written
together at the end (:class:`attnviz.report.RunOutput`), or none.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from attnviz.errors import UsageError
from attnviz.pipelines.common import (
    TEXT_VIEWS, ModelRequest, OutputRequest, StyleRequest, mark_random_weights, notify, notify_left_alone, notify_provenance, parse_views,
    provenance, quiet_libraries,
    verification_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.analysis.focus import Focus
    from attnviz.analysis.select import ViewSpec
    from attnviz.render.layout import Style
    from attnviz.types import TextAttention

#: File stem of each view (per attention kind; encoder-decoder models prefix the kind: ``cross-matrix``).
VIEW_STEMS = {"head": "head-view", "model": "model-view", "focus": "focus-view", "matrix": "matrix"}
#: Keep every layer and head in memory (for the model view) up to this many bytes.
FULL_BUDGET = 256 * 2**20
#: Longest ``--text-file`` attnviz reads (bytes); longer texts would be truncated to the model's positions anyway.
TEXT_FILE_LIMIT = 16 * 2**20


@dataclass(frozen=True)
class TextRequest:
    """Everything ``attnviz text`` takes (see ``attnviz text --help`` and README "Text").

    ``text`` or ``text_file`` (``-``: standard input) gives the input; ``token``/``token_index`` the focus
    (0-based occurrence); ``layer``/``head`` (0-based, negative from the end) the head view and matrix;
    ``views``: any of :data:`TEXT_VIEWS` (comma-separated string or tuple); ``half``: store ``--save-attn``
    as float16; ``top``: heads listed for the focus; ``direction``/``adjacent``: the focus link rules;
    ``method``: registered methods to draw for the focus token's row (or the [CLS]/last token's), as
    ``method-NAME`` and, for several, ``methods`` (:func:`attnviz.analysis.explain.explain_text`);
    ``target_class``: the class a classifier's gradient methods explain (default: the top class);
    ``global_tokens``: Longformer / LED only, the tokens with global attention, ``"0,[SEP],it"`` (0-based positions or
    tokens, every occurrence of a token; default: the first token); ``window_at``: Longformer / LED, the position whose window the long-document
    window view draws (:mod:`attnviz.pipelines.longdoc`, which takes over for long inputs of those models).
    """

    text: str | None = None
    token: str | None = None
    token_index: int | None = None
    layer: int | None = None
    head: int | None = None
    words: bool = False
    hide_special: bool = False
    target: str | None = None
    text_file: Path | None = None
    max_length: int | None = None
    half: bool = False
    top: int = 10
    direction: str = "back"
    adjacent: bool = False
    views: str | tuple[str, ...] = TEXT_VIEWS
    method: str | tuple[str, ...] = ()
    target_class: int | None = None
    global_tokens: str | None = None
    window_at: int | None = None
    model: ModelRequest = ModelRequest()
    output: OutputRequest = OutputRequest()
    style: StyleRequest = StyleRequest()


@dataclass(frozen=True)
class TextRun:
    """What one ``attnviz text`` run produced: the capture, the focus analysis, the files; ``to_json()`` is ``--json``."""

    result: "TextAttention"
    spec: "ViewSpec"
    layer: int | None
    head: int | None
    focus: "Focus | None"
    files: tuple[Path, ...]
    save_attn: Path | None
    skipped: tuple[str, ...]
    random_weights: str | None
    style: "Style"
    views: tuple[str, ...]
    removed: str | None = None
    provenance: dict = field(default_factory=dict)
    explanation: object = None  # attnviz.analysis.explain.Explanation (with --method)
    global_positions: tuple[int, ...] | None = None  # Longformer / LED: the tokens with global attention

    def to_json(self) -> dict:
        """The ``--json`` document (plain JSON types only)."""
        from attnviz.analysis.select import units_for
        from attnviz.render.layout import model_reference

        r = self.result
        doc = {
            "model": model_reference(r.model_id),
            "label": self.style.model_label(r.model_id),
            "model_type": r.model_type,
            "backend": r.backend,
            "random_weights": self.random_weights,
            "quantization": self.provenance.get("quantization"),
            "tokenizer_fixes": self.provenance.get("tokenizer_fixes", []),
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
            "style": self.style.describe(),
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
                "fallback": f.fallback,
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
        if self.explanation is not None:
            doc.update(_methods_json(self.explanation))
        if self.global_positions is not None:
            doc["global_tokens"] = [{"index": i, "token": r.tokens.tokens[i]} for i in self.global_positions]
        doc["files"] = [str(p) for p in self.files]
        doc["save_attn"] = str(self.save_attn) if self.save_attn else None
        doc["skipped_views"] = list(self.skipped)
        doc.update(verification_json(r.verification))
        return doc


# ---------------------------------------------------------------------------
# reading and checking the request (nothing heavy is imported here)


def read_text_file(path: Path) -> str:
    """Read ``--text-file`` (``-`` is standard input): a regular UTF-8 file of at most :data:`TEXT_FILE_LIMIT` bytes.

    Raises:
        InputError: missing, a folder, a FIFO/device or other non-regular file, too large, not UTF-8.
    """
    import stat
    import sys

    from attnviz.errors import InputError

    limit = TEXT_FILE_LIMIT
    if str(path) == "-":
        data = sys.stdin.buffer.read(limit + 1)
        where = "standard input"
    else:
        p = Path(path).expanduser()
        try:
            st = p.stat()
        except FileNotFoundError:
            raise InputError(f"--text-file '{path}' does not exist") from None
        except OSError as exc:
            raise InputError(f"cannot read --text-file '{path}': {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"--text-file '{path}' is a folder")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"--text-file '{path}' is not a regular file (a pipe or device?); use --text-file - to read standard input")
        if st.st_size > limit:
            raise InputError(f"--text-file '{path}' is {st.st_size / 2**20:.1f} MiB; attnviz reads at most {limit // 2**20} MiB")
        try:
            with open(p, "rb") as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            raise InputError(f"cannot read --text-file '{path}': {exc.strerror}") from None
        where = f"--text-file '{path}'"
    if len(data) > limit:
        raise InputError(f"{where} is more than {limit // 2**20} MiB; attnviz reads at most {limit // 2**20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where} is not UTF-8 text") from None


def input_text(request: TextRequest) -> str:
    """The text to show: ``request.text`` or the contents of ``request.text_file``.

    Raises:
        UsageError: both or neither given; an empty or whitespace-only text. InputError: see :func:`read_text_file`.
    """
    if request.text_file is not None:
        if request.text is not None:
            raise UsageError("give the text either as an argument or with --text-file, not both")
        content = read_text_file(request.text_file)
    elif request.text is None:
        raise UsageError("give a text, e.g. attnviz text \"The cat sat.\", or --text-file PATH")
    else:
        content = request.text
    if not content.strip():
        raise UsageError("the text is empty" if not content else "the text is only whitespace")
    if not any(unicodedata.category(c)[0] in "LNPS" for c in content[:100_000]):
        notify("the text has no visible characters (only spaces, control or zero-width characters)")
    return content


def check_request(request: TextRequest) -> tuple[list[str], bool, tuple[str, ...], "Style"]:
    """Every check that needs neither torch nor the model: formats, views, style, option ranges.

    Returns ``(figure formats, html, views, style)``.

    Raises:
        UsageError: a bad value (one line each).
    """
    figure_formats, html = request.output.formats()
    views = parse_views(request.views if isinstance(request.views, str) else ",".join(request.views), TEXT_VIEWS)
    style = request.style.style()
    if request.top < 1:
        raise UsageError("--top must be at least 1")
    if request.direction not in ("back", "forward", "both"):  # attnviz.analysis.focus.DIRECTIONS (no torch import here)
        raise UsageError(f"--direction must be one of back, forward, both, not '{request.direction}'")
    if request.token_index is not None and request.token is None:
        raise UsageError("--token-index picks one occurrence of --token; give --token too")
    if request.token_index is not None and request.token_index < 0:
        raise UsageError(f"--token-index must be 0 or more, not {request.token_index}")
    if request.max_length is not None and request.max_length < 2:
        raise UsageError(f"--max-length must be at least 2, not {request.max_length}")
    from attnviz.analysis.explain import TARGETED, parse_methods

    if request.target_class is not None and not any(m in TARGETED for m in parse_methods(request.method)):
        raise UsageError("--target-class is the class the gradient methods explain: add --method relevance (or grad-attention)")
    return figure_formats, html, views, style


def _special_strings(location: str) -> set[str]:
    """The special tokens a local tokenizer declares (tokenizer_config.json / special_tokens_map.json), lower-cased."""
    import json

    found: set[str] = set()
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            doc = json.loads((Path(location) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        values = list(doc.values()) if isinstance(doc, dict) else []
        values += list((doc.get("added_tokens_decoder") or {}).values()) if isinstance(doc, dict) else []
        for v in values:
            for item in v if isinstance(v, list) else [v]:
                text = item.get("content") if isinstance(item, dict) else item
                if isinstance(text, str) and text:
                    found.add(text.casefold())
    return found


def early_token_check(token: str | None, text: str, target: str | None, location: str) -> None:
    """Refuse a ``--token`` that cannot be in the input, in milliseconds (no tokenizer, no transformers).

    A token or word of the text is always a part of the text; so a ``--token`` whose
    :func:`attnviz.analysis.select.token_key` is not a substring of the text's (and is no special
    token such as ``[CLS]``) is refused now rather than after the tokenizer loads. Everything else is
    checked against the real tokens later.

    Raises:
        UsageError: the token does not occur in the text.
    """
    if token is None:
        return
    from attnviz.analysis.match import token_key

    key = token_key(token)
    if not key:
        raise UsageError("--token is empty")
    if key.startswith(("[", "<", "▁", "ġ")) or key in _special_strings(location):
        return
    where = target if target is not None else text
    if key not in token_key(" ".join(where.split())) and key not in token_key(where):
        which = "--target text" if target is not None else "text"
        raise UsageError(f"token '{token}' is not in the input: it does not occur in the {which}")


def _config_positions(location: str) -> int | None:
    """The model's maximum positions from a local ``config.json`` (None if unknown): for ``--max-length``."""
    from attnviz.inputs import config_document

    doc = config_document(location) or {}
    doc = doc.get("text_config") if isinstance(doc.get("text_config"), dict) else doc
    values = [doc.get(k) for k in ("max_position_embeddings", "n_positions", "max_sequence_length")]
    values = [v for v in values if isinstance(v, int) and v > 0]
    return min(values) if values else None


# ---------------------------------------------------------------------------
# the run


def _planned_files(kinds: tuple[str, ...], keep_full: bool, focus_kind: str | None, formats, views) -> list[tuple[str, str, str]]:
    """``(kind, view, file stem)`` of every figure the run will write, in order: the one list both the
    check before loading and the writing use."""
    planned = []
    for kind in kinds:
        prefix = f"{kind}-" if len(kinds) > 1 else ""
        for view in TEXT_VIEWS:
            if view not in views or (view == "model" and not keep_full) or (view == "focus" and kind != focus_kind):
                continue
            planned.append((kind, view, prefix + VIEW_STEMS[view]))
    return planned


def run(request: TextRequest, progress: Callable[[str, int], None] | None = None) -> TextRun:
    """Do the work of ``attnviz text`` and return what was produced (nothing is printed).

    Args:
        request: the options (see :class:`TextRequest`).
        progress: called with ``(kind, layer)`` after each captured attention layer (a progress bar).

    Returns:
        :class:`TextRun`; ``run.to_json()`` is the ``--json`` document.

    Raises:
        UsageError (2), ModelError (3), InputError (4), OutputError (5): one line each; nothing is written then.
    """
    from attnviz.models import check_layer_head, resolve_model
    from attnviz.report import RunOutput, check_tensor_path, model_files

    quiet_libraries()
    figure_formats, html, views, style = check_request(request)
    content = input_text(request)
    out = request.output
    tensor_path = check_tensor_path(out.save_attn) if out.save_attn else None
    source = resolve_model(request.model.name)
    check_layer_head(source, request.layer, request.head, "text_config")  # milliseconds: config.json, no imports
    positions = _config_positions(source.location)
    if request.max_length is not None and positions is not None and request.max_length > positions:
        raise UsageError(f"--max-length {request.max_length} is more than the model's maximum of {positions} positions")
    early_token_check(request.token, content, request.target, source.location)

    from attnviz.analysis.focus import analyse_focus, focus_rule
    from attnviz.analysis.select import ViewSpec, find_focus
    from attnviz.capture import CapturePlan
    from attnviz.inputs.tokens import attend_prepared, load_text_model, prepare_text

    spec = ViewSpec(words=request.words, hide_special=request.hide_special)
    tm = load_text_model(request.model.name, request.model.load_options(), weights=False)  # config and tokenizer first
    num_layers, num_heads = tm.num_layers, tm.num_heads  # (raises for a model without attention)
    layer, head = request.layer, request.head
    deepest = max(num_layers, tm.num_decoder_layers)  # each view reads the layer its kind has (clamped per kind)
    if layer is not None and not -deepest <= layer < deepest:
        raise UsageError(f"--layer {layer} is out of range: this model has {deepest} layers (0..{deepest - 1})")
    if head is not None and not -num_heads <= head < num_heads:
        raise UsageError(f"--head {head} is out of range: this model has {num_heads} heads per layer (0..{num_heads - 1})")
    prepared = prepare_text(tm, content, request.target, request.max_length)
    from attnviz.pipelines.longdoc import run_long, short_block_sparse, wants_long_document

    long_document = wants_long_document(tm, len(prepared.tokens), request.window_at)
    if request.window_at is not None and not long_document:
        raise UsageError(f"--window-at is for long documents with sparse attention (Longformer, LED, LongT5, BigBird "
                         f"from its block-sparse length); '{tm.source.model_id}' is a {tm.model_type} model"
                         + (f" and {len(prepared.tokens)} tokens run full attention" if tm.model_type in ("big_bird", "bigbird_pegasus") else ""))
    globals_ = _global_positions(tm, prepared, request.global_tokens, spec, dense=not long_document)
    if long_document:
        return run_long(request, tm, prepared, content, globals_, figure_formats, html, style, tensor_path, progress)
    info, target_info = prepared.tokens, prepared.target_tokens
    n = max(len(info), len(target_info) if target_info is not None else 0)
    full_bytes = 4 * num_layers * num_heads * n * n * (3 if tm.encoder_decoder else 1)
    keep_full = full_bytes <= FULL_BUDGET
    draws_head = "head" in views or "matrix" in views
    skipped: list[str] = []
    if not keep_full and "model" in views:
        skipped.append(f"model view: {n} tokens x {num_layers} layers x {num_heads} heads would need {full_bytes / 2**30:.1f} GiB")
    on_target = tm.encoder_decoder and target_info is not None and len(target_info) > 1
    rows: tuple[int, ...] = ()
    cross_rows: tuple[int, ...] = ()
    token = request.token
    if token is not None:
        positions_ = find_focus(target_info if on_target else info, token, request.token_index, spec)
        cross_rows, rows = (tuple(positions_), ()) if on_target else ((), tuple(positions_))

    output = RunOutput(
        out.out, command="text", force=out.force, protect=model_files(tm.source.location),
        settings={"model": tm.source.model_id, "text": content[:200], "token": token, "layer": layer, "head": head,
                  "words": request.words, "hide_special": request.hide_special, "format": out.format,
                  "size": request.style.size, "views": list(views), "save_attn": str(tensor_path) if tensor_path else None},
    )
    kinds = ("encoder", "decoder", "cross") if tm.encoder_decoder else ("self",)
    focus_kind = ("cross" if on_target else kinds[0]) if token is not None else None
    planned = _planned_files(kinds, keep_full, focus_kind, figure_formats, views)
    from attnviz.analysis.explain import TARGETED, applicable_methods, parse_methods

    chosen_methods = parse_methods(request.method)
    method_stems = [f"method-{m}" for m in chosen_methods] + (["methods"] if len(chosen_methods) > 1 else [])
    output.check([f"{stem}.{fmt}" for fmt in figure_formats for _, _, stem in planned]
                 + [f"{stem}.{fmt}" for fmt in figure_formats for stem in method_stems] + (["report.html"] if html else []),
                 tensor=tensor_path)

    chosen_methods = applicable_methods(request.method, chosen_methods, rollout=not tm.encoder_decoder,
                                        targeted=tm.head_kind is not None)
    targeted = [m for m in chosen_methods if m in TARGETED]
    if "rollout" in chosen_methods and tm.encoder_decoder:
        raise UsageError("--method rollout has no rule for cross-attention; for an encoder-decoder model use relevance "
                         "(Chefer et al.'s encoder-decoder rules), attention, grad-attention or value-norm")
    if targeted and tm.head_kind is None:
        raise UsageError(f"--method {targeted[0]} explains a prediction, but '{tm.source.model_id}' names no task head (a "
                         "classifier or language-model head) in its config; use attention, rollout or value-norm")
    if request.target_class is not None and tm.head_kind != "classifier":
        raise UsageError(f"--target-class is for classifiers; '{tm.source.model_id}' is a {tm.head_kind or 'base'} model")
    tm = tm.with_weights(head=bool(targeted))
    short_block_sparse(tm, len(prepared.tokens))
    note = mark_random_weights(output, tm.model)
    notify_provenance(tm.model, tm.tokenizer)
    layers: frozenset[int] = frozenset()
    head_maps: frozenset = frozenset()
    follow = None
    if not keep_full and draws_head:
        # capture only what the head view and matrix draw: one head's (or the head mean's) [N, N] map
        fixed_head = None if head is None else head % num_heads
        if tm.encoder_decoder:
            if layer is not None or token is None:
                chosen = (layer if layer is not None else -1) % deepest  # each kind keeps the layer it has
                layers = frozenset({min(chosen, num_layers - 1), min(chosen, tm.num_decoder_layers - 1)})
        elif token is None:
            head_maps = frozenset({((layer if layer is not None else -1) % num_layers, fixed_head)})
        elif layer is not None and head is not None:
            head_maps = frozenset({(layer % num_layers, fixed_head)})
        else:  # the focus token's top head: followed layer by layer in the same pass
            rule = focus_rule(info, info, "self", token, request.token_index, spec, request.direction, request.adjacent)
            follow = rule.follow(None if layer is None else layer % num_layers, fixed_head)
    verify = request.model.verify
    with output:
        writer = None
        if tensor_path is not None and not keep_full:
            writer = _open_writer(tm, prepared, output.tensor_target(tensor_path), tensor_path, request.half)
        collector = _html_collector(tm, prepared, rows, cross_rows) if html and not keep_full else None
        plan = CapturePlan(
            full=keep_full, layers=layers, rows=rows, cross_rows=cross_rows, need_outputs=False,
            on_layer=_both(writer.write_layer if writer is not None else None, collector), head_maps=head_maps, follow=follow,
        )
        try:
            result = attend_prepared(tm, prepared, plan, progress, verify=verify)
            if writer is not None:
                writer.close()
        finally:
            if writer is not None:
                writer.abort()
        if result.notice:
            notify(result.notice)
        main = result.main
        focus = None
        if token is not None:
            focus = analyse_focus(result, token, request.token_index, spec, request.top, direction=request.direction,
                                  adjacent=request.adjacent)
            if focus.fallback:
                notify(focus.fallback)
        if focus is not None and focus.top and layer is None:
            # default view: the focus token's top head (of its own attention kind)
            layer = focus.top[0].layer
            head = focus.top[0].head if head is None else head
        # an encoder-decoder focus may pick a decoder layer the (shallower) encoder lacks: each view clamps per kind
        widest = max(result.attention.values(), key=lambda m: m.num_layers)
        layer = widest.check_layer(layer if layer is not None else main.num_layers - 1)
        if head is not None:
            head = main.check_head(head)
        result = _capture_missing(tm, prepared, result, layer, head, draws_head, progress, verify)
        for figure_format in figure_formats:
            _write_views(result, spec, layer, head, focus, output, figure_format, style, planned)
        if html:
            from attnviz.html import text_page

            output.page(text_page(result, focus, spec, layer, head, collector, label=style.model_label(result.model_id)), "report")
        if tensor_path is not None and writer is None:
            _save_full(result, output.tensor_target(tensor_path), request.half)
        explanation = None
        if chosen_methods:
            from attnviz.analysis.explain import default_text_row, explain_text

            if tm.encoder_decoder:  # decoder positions: the focus token of --target, else the one predicting its last word
                explained = cross_rows if on_target and cross_rows else (_last_predicting_row(prepared.target_tokens),)
            else:
                explained = rows if rows else (default_text_row(tm, prepared),)
            explanation = explain_text(tm, prepared, chosen_methods, rows=explained,
                                       layer=request.layer if request.layer is not None else -1,
                                       target_class=request.target_class)
            _write_methods(result, explanation, output, figure_formats, style)
    notify_left_alone(output)
    return TextRun(result, spec, layer, head, focus, tuple(output.files), output.tensor, tuple(skipped), note, style, views,
                   provenance=provenance(tm.model, tm.tokenizer), explanation=explanation, global_positions=globals_)




def _global_positions(tm, prepared, text: str | None, spec, dense: bool = True) -> tuple[int, ...] | None:
    """Longformer / LED: the global token positions (``--global``; default the first token), set in the model inputs
    and said in a notice; None for other models.

    Raises:
        UsageError: ``--global`` for another model, a position out of range, a token not in the text.
    """
    import torch

    from attnviz.analysis.select import find_focus

    from attnviz.pipelines.longdoc import GLOBAL_ATTENTION_TYPES

    if tm.model_type not in GLOBAL_ATTENTION_TYPES:
        if text is not None:
            raise UsageError(f"--global is for models with global attention tokens (Longformer, LED); "
                             f"'{tm.source.model_id}' is a {tm.model_type} model")
        return None
    n = len(prepared.tokens)
    from attnviz.sparse import check_dense_budget

    if dense:
        check_dense_budget(n, tm.num_layers, tm.num_heads)  # said before the weights load (the capture checks again)
    positions: set[int] = set()
    for part in (p.strip() for p in (text or "0").split(",")):
        if not part:
            continue
        if part.lstrip("-").isdigit():
            i = int(part)
            if not -n <= i < n:
                raise UsageError(f"--global {part} is out of range: the text has {n} tokens (0..{n - 1})")
            positions.add(i % n)
        else:  # a token: every occurrence of it is global
            from attnviz.analysis.match import token_key
            from attnviz.analysis.select import units_for

            units = units_for(prepared.tokens, spec)
            hits = [g for g, lab in zip(units.groups, units.labels) if token_key(lab) == token_key(part)]
            if not hits:
                find_focus(prepared.tokens, part, None, spec)  # raises: not in the text, with the list of tokens
            for group in hits:
                positions.update(group)
    if not positions:
        raise UsageError("--global is empty; give token positions or tokens, e.g. --global 0")
    mask = torch.zeros_like(prepared.inputs["input_ids"])
    mask[0, sorted(positions)] = 1
    prepared.inputs["global_attention_mask"] = mask
    chosen = sorted(positions)
    named = ", ".join(f"{i} '{prepared.tokens.tokens[i]}'" for i in chosen[:12]) + (
        f" (+{len(chosen) - 12} more; all in the JSON)" if len(chosen) > 12 else "")
    notify(f"{tm.model_type}: sliding-window attention plus global tokens {named}"
           + ("" if text else " (the first token, as its docs recommend; --global to choose)"))
    return tuple(sorted(positions))


def _last_predicting_row(target_tokens) -> int:
    """The decoder position that predicts the last non-special token of the target (``[start] + target + </s>``: the
    one before that token), so that the explained prediction is a word of ``--target``, not what follows ``</s>``;
    position 0 (the start token, predicting the first token) without a target."""
    special = target_tokens.special
    for r in range(len(special) - 2, -1, -1):
        if not special[r + 1]:
            return r
    return 0


def _write_methods(result, explanation, output, formats, style) -> None:
    """``method-NAME`` per method and, for several, ``methods`` (all blocks in one figure)."""
    from attnviz.render.text import token_scores_view

    for fmt in formats:
        for m in explanation.maps:
            output.figure(token_scores_view(result, explanation, methods=[m], style=style), f"method-{m.method}", fmt)
        if len(explanation.maps) > 1:
            output.figure(token_scores_view(result, explanation, style=style), "methods", fmt)


def _methods_json(e) -> dict:
    """``method``/``target``/``method_rows`` (the first method asked: one row over the tokens per explained position)
    and every method under ``methods``."""
    def rows(m):
        return [{"position": p, "values": [round(float(v), 8) for v in row]} for p, row in zip(m.positions, m.values.tolist())]

    first = e.maps[0]
    return {
        "method": first.method,
        "target": e.target.to_dict() if e.target is not None else None,
        "method_rows": rows(first),
        "methods": [{"name": m.method, "source": m.source, "layer": m.layer, "unit": m.unit, "target": m.needs_target,
                     "rows": rows(m)} for m in e.maps],
        "method_checks": e.checks_json(),
    }


def _capture_missing(tm, prepared, result, layer: int, head: int | None, draws_head: bool, progress, verify: bool):
    """Capture, in a second pass, the one map the head view and matrix draw when the first pass did not keep it
    (the ranking chose a head the pass did not follow, or an encoder-decoder layer)."""
    from attnviz.capture import CapturePlan
    from attnviz.inputs.tokens import attend_prepared

    if not draws_head:
        return result
    if len(result.attention) == 1 and not result.main.has_head_map(layer, head):
        plan = CapturePlan(head_maps=frozenset({(layer, head)}), need_outputs=False)
        again = attend_prepared(tm, prepared, plan, progress, verify=verify)
        return replace(result, attention={k: replace(m, head_maps={**m.head_maps, **again.attention[k].head_maps})
                                          for k, m in result.attention.items()})
    wanted = {kind: min(layer, maps.num_layers - 1) for kind, maps in result.attention.items()}
    if len(result.attention) > 1 and not all(result.attention[k].has_layer(l) for k, l in wanted.items()):
        plan = CapturePlan(layers=frozenset(wanted.values()), need_outputs=False)  # the forward stops after it where it can
        again = attend_prepared(tm, prepared, plan, progress, verify=verify)
        return replace(result, attention={k: replace(m, layers={**m.layers, **again.attention[k].layers})
                                          for k, m in result.attention.items()})
    return result


def _write_views(result, spec, layer, head, focus, output, fmt: str, style, planned) -> None:
    """Stage every planned figure of one format (a head view or matrix whose map was not captured is skipped)."""
    from attnviz.render.text import focus_view, head_view, matrix_view, model_view

    for kind, view, stem in planned:
        maps = result.attention[kind]
        kind_layer = min(layer, maps.num_layers - 1)
        kind_head = head if head is None or head < maps.num_heads else None
        focus_tokens = focus.token_indices if focus is not None and focus.kind == kind else None
        if view in ("head", "matrix"):
            if not maps.has_head_map(kind_layer, kind_head):
                continue
            if view == "head":
                fig = head_view(result, kind_layer, kind_head, spec, focus=focus_tokens, kind=kind, style=style)
            else:
                fig = matrix_view(result, kind_layer, kind_head, spec, kind=kind, focus=focus_tokens, style=style)
        elif view == "model":
            if maps.full is None:
                continue
            fig = model_view(result, spec, kind=kind, style=style)
        else:
            fig = focus_view(result, focus, spec, style=style)
        output.figure(fig, stem, fmt)


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
    from attnviz.inputs.tokens import model_inputs
    from attnviz.report import AttentionWriter, attention_file_size

    shapes = attention_shapes(tm.model, model_inputs(tm, prepared))
    dtype = "float16" if half else "float32"
    meta = _metadata(prepared, tm.source.model_id)
    notify(f"--save-attn: streaming {attention_file_size(shapes, dtype, meta) / 2**30:.2f} GiB of {dtype} attention to {final}")
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
    if run.layer is None:
        return None
    layer = min(run.layer, maps.num_layers - 1)  # an encoder shallower than the decoder: its last layer, as the view
    if not maps.has_head_map(layer, run.head):
        return None
    vm = prepare(maps.head_map(layer, run.head), qi, ki, run.spec)
    w = vm.attn.numpy()
    nq, nk = w.shape
    top_k = LONG_TOP_K if max(nq, nk) > LONG_UNITS else nk
    mask = causal_mask(vm.query_units, vm.key_units) if maps.causal else None
    qs, ks, vals = head_view_links(w, mask, top_k)
    return {
        "layer": layer, "head": run.head, "kind": maps.kind,
        "queries": list(vm.query_units.labels), "keys": list(vm.key_units.labels),
        "top_k": top_k if top_k < nk else None, "min_weight": None if top_k < nk else 0.005,
        "links": [[int(q), int(k), round(float(v), 6)] for q, k, v in zip(qs, ks, np.asarray(vals))],
    }
