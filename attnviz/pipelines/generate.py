"""``attnviz generate`` as a library call: a decoder writes, and every generated token's attention over the
prompt and the tokens before it is kept (exact, float32) with the figures.

::

    from attnviz.pipelines.generate import GenerateRequest, run
    from attnviz.pipelines.common import ModelRequest

    run_ = run(GenerateRequest("The capital of France is", max_new_tokens=8, model=ModelRequest("path/to/model")))
    run_.result.text           # the generated text
    run_.links[0]              # the strongest earlier tokens of the first generated token
    run_.to_json()             # what `attnviz generate ... --json` prints

All files are written together at the end (:class:`attnviz.report.RunOutput`), or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from attnviz.errors import UsageError
from attnviz.models import DEFAULT_GENERATE_MODEL
from attnviz.pipelines.common import (
    RANDOM_STAMP, ModelRequest, OutputRequest, StyleRequest, mark_random_weights, notify, notify_left_alone,
    notify_provenance, provenance, quiet_libraries,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.analysis.focus import Focus
    from attnviz.render.layout import Style
    from attnviz.types import GenerationAttention


@dataclass(frozen=True)
class GenerateRequest:
    """Everything ``attnviz generate`` takes (see ``attnviz generate --help`` and README "Generation").

    ``prompt`` (the source text for encoder-decoder models); ``max_new_tokens``; ``sample`` with
    ``temperature``/``top_p``/``seed`` (else greedy); ``chat``: wrap the prompt in the tokenizer's chat
    template; ``token``/``token_index`` or ``step`` (0-based): the generated token whose focus and head view
    to draw; ``layer``/``head`` (0-based) and ``fusion`` (mean, max over heads): the maps; ``top``: attended
    tokens per step in the JSON; ``method``: registered methods that explain one generated token -- the
    ``token``/``step`` chosen, else the last -- (its log-probability, read at the position that predicted it;
    :func:`explain_step`), written as ``method-NAME`` and, for several, ``methods``; ``image``: a photo for a
    vision-language model to answer about (run by :func:`attnviz.pipelines.vlm.run`).
    """

    prompt: str
    max_new_tokens: int = 32
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    chat: bool = False
    token: str | None = None
    token_index: int | None = None
    step: int | None = None
    layer: int | None = None
    head: int | None = None
    fusion: str = "mean"
    top: int = 3
    method: str | tuple[str, ...] = ()
    image: str | Path | None = None
    model: ModelRequest = ModelRequest(DEFAULT_GENERATE_MODEL)
    output: OutputRequest = OutputRequest()
    style: StyleRequest = StyleRequest()


@dataclass(frozen=True)
class GenerateRun:
    """What one ``attnviz generate`` run produced: the generation's attention, each step's strongest links, the
    focus of a chosen step, the files; ``to_json()`` is ``--json``."""

    result: "GenerationAttention"
    links: tuple  # per step: list[Link] (self-attention)
    source_links: tuple | None  # per step: list[Link] (cross-attention), encoder-decoder only
    layer: int | None
    head: int | None
    fusion: str
    step: int | None = None
    focus: "Focus | None" = None
    files: tuple[Path, ...] = ()
    save_attn: Path | None = None
    random_weights: str | None = None
    style: "Style | None" = None
    provenance: dict | None = None
    explanation: object = None  # attnviz.analysis.explain.Explanation (with --method)
    method_step: int | None = None

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
        if self.explanation is not None:
            from attnviz.pipelines.text import _methods_json

            doc.update(_methods_json(self.explanation))
            doc["method_step"] = self.method_step
        doc["files"] = [str(p) for p in self.files]
        doc["save_attn"] = str(self.save_attn) if self.save_attn else None
        doc["notice"] = r.notice
        doc["random_weights"] = self.random_weights
        doc["quantization"] = (self.provenance or {}).get("quantization")
        doc["tokenizer_fixes"] = (self.provenance or {}).get("tokenizer_fixes", [])
        return doc



def run(request: GenerateRequest, progress: Callable[[int, int], None] | None = None) -> GenerateRun:
    """Do the work of ``attnviz generate`` and return what was produced (nothing is printed).

    Args:
        request: the options (see :class:`GenerateRequest`).
        progress: called with ``(generated, max_new_tokens)`` after each generated token (a progress bar).

    Returns:
        :class:`GenerateRun`; ``run.to_json()`` is the ``--json`` document.

    Raises:
        UsageError (2), ModelError (3), InputError (4), OutputError (5): one line each; nothing is written then.
    """
    if request.image is not None:
        raise UsageError("a request with an image is a vision-language run: call attnviz.pipelines.vlm.run(request)")
    q, out = request, request.output
    prompt, model, max_new_tokens, sample = q.prompt, q.model.name, q.max_new_tokens, q.sample
    temperature, top_p, seed, chat, token, token_index = q.temperature, q.top_p, q.seed, q.chat, q.token, q.token_index
    step, layer, head, fusion, top = q.step, q.layer, q.head, q.fusion, q.top
    from attnviz.report import RunOutput, check_tensor_path, model_files

    style = q.style.style()
    formats, html = out.formats()
    check_request(q)
    tensor_path = check_tensor_path(out.save_attn) if out.save_attn else None

    quiet_libraries()
    from attnviz.analysis.generation import candidates, strongest_links
    from attnviz.generate import analyse_step_focus, attend_generation, find_step, load_generation_model
    from attnviz.models import load_config, resolve_model

    output = RunOutput(
        out.out, command="generate", force=out.force, protect=model_files(resolve_model(model).location),
        settings={"model": model, "prompt": prompt[:200], "max_new_tokens": max_new_tokens, "sample": sample,
                  "temperature": temperature, "top_p": top_p, "seed": seed, "format": out.format, "size": q.style.size,
                  "dpi": q.style.dpi, "label": q.style.label, "cmap": q.style.cmap, "scale": q.style.scale, "save_attn": str(tensor_path) if tensor_path else None},
    )
    options = q.model.load_options()
    _check_layer_head(model, options, layer, head)  # from the config, before any weights load
    names = ["generation-map", "sink-share"]
    if getattr(load_config(resolve_model(model), options), "is_encoder_decoder", False):
        names.append("cross-map")
    if token is not None or step is not None:
        names += ["focus-view", "head-view"]
    from attnviz.analysis.explain import parse_methods

    chosen_methods = parse_methods(q.method)
    names += [f"method-{m}" for m in chosen_methods] + (["methods"] if len(chosen_methods) > 1 else [])
    if chosen_methods and getattr(load_config(resolve_model(model), options), "is_encoder_decoder", False):
        raise UsageError(f"attnviz generate --method covers decoder-only models; for the encoder-decoder '{model}' use "
                         "attnviz text with --target (the generated text) and --method")
    output.check([f"{n}.{f}" for f in formats for n in names] + (["report.html"] if html else []), tensor=tensor_path)
    tm = load_generation_model(model, options)
    note = mark_random_weights(output, tm.model)
    notify_provenance(tm.model, tm.tokenizer)
    new_head = getattr(tm.model, "attnviz_new_head", ())
    if new_head and not note:  # --random-weights-ok: the LM head was initialised at random, so is every token
        note = (f"random weights: the checkpoint has no trained language-model head ({new_head[0]} was initialised "
                "at random), so the generated tokens are noise")
        notify(note)
        output.stamp = RANDOM_STAMP
    result = attend_generation(prompt, tm, max_new_tokens=max_new_tokens, sample=sample, temperature=temperature,
                               top_p=top_p, seed=seed, chat=chat, progress=progress, verify=q.model.verify)
    if result.notice:
        notify(result.notice)
    candidates(result, layer, head)  # checks --layer/--head
    links = strongest_links(result, layer, head, top)
    source_links = strongest_links(result, layer, head, top, cross=True) if result.cross_attentions is not None else None
    chosen = find_step(result, token, token_index) if token is not None else (result.check_step(step) if step is not None else None)
    focus = analyse_step_focus(result, chosen)[1] if chosen is not None else None
    explanation, method_step = None, None
    if chosen_methods:
        method_step = chosen if chosen is not None else result.num_generated - 1
        explanation = explain_step(tm, result, method_step, chosen_methods, layer=layer if layer is not None else -1)
    with output:
        files = [p for f in formats for p in _write_views(result, layer, head, fusion, chosen, output, f, style)]
        if explanation is not None:
            from attnviz.generate import as_text_attention
            from attnviz.render.text import token_scores_view

            text = as_text_attention(result)
            for f in formats:
                files += [output.figure(token_scores_view(text, explanation, methods=[m], style=style), f"method-{m.method}", f)
                          for m in explanation.maps]
                if len(explanation.maps) > 1:
                    files.append(output.figure(token_scores_view(text, explanation, style=style), "methods", f))
        if html:
            from attnviz.html import generation_page

            files.append(output.page(generation_page(result, layer, head, label=style.model_label(result.model_id)), "report"))
        if tensor_path is not None:
            _save(result, output.tensor_target(tensor_path))
    notify_left_alone(output)
    return GenerateRun(result, tuple(links), tuple(source_links) if source_links is not None else None, layer, head, fusion,
                       chosen, focus, tuple(files), output.tensor, note, style, provenance(tm.model, tm.tokenizer),
                       explanation, method_step)


def check_request(q: GenerateRequest) -> None:
    """The options of a generate request that need no model: ``--top``, ``--token``/``--step``, ``--fusion``, the
    sampling settings, ``--max-new-tokens`` and the prompt (also for ``--image`` runs, :mod:`attnviz.pipelines.vlm`).

    Raises:
        UsageError: one line naming the option.
    """
    if q.top < 1:
        raise UsageError("--top must be at least 1")
    if q.token is not None and q.step is not None:
        raise UsageError("give either --token or --step, not both")
    if q.fusion not in ("mean", "max"):
        raise UsageError(f"--fusion must be one of mean, max, not '{q.fusion}'")
    if not q.sample and (q.temperature != 1.0 or q.top_p != 1.0 or q.seed is not None):
        raise UsageError("--temperature, --top-p and --seed need --sample (decoding is greedy without it)")
    if q.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, not {q.max_new_tokens}")
    if q.sample and not q.temperature > 0:
        raise UsageError(f"--temperature must be > 0, not {q.temperature}")
    if q.sample and not 0 < q.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], not {q.top_p}")
    if not q.prompt or not q.prompt.strip():
        raise UsageError("the prompt is empty" if not q.prompt else "the prompt is only whitespace")


def explain_step(tm, result, step: int, names, layer: int = -1):
    """The methods' explanation of generated token ``step``: its log-probability, read at the position that predicted
    it (the token before it), over prompt + generated tokens up to it (:func:`attnviz.analysis.explain.explain_text`).

    Returns:
        :class:`attnviz.analysis.explain.Explanation` whose rows are that one position.
    """
    import torch

    from attnviz.analysis.explain import explain_text
    from attnviz.generate import full_sequence
    from attnviz.inputs.tokens import PreparedText
    from attnviz.types import TokenInfo

    ids = list(full_sequence(result))[: result.prompt_length + step + 1]
    labels = result.key_labels[: len(ids)]
    special = result.key_special[: len(ids)]
    device = next(tm.model.parameters()).device
    inputs = {"input_ids": torch.tensor([ids], device=device), "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device)}
    tokens = TokenInfo(result.text, tuple(labels), tuple(None for _ in labels), tuple((0, 0) for _ in labels), tuple(special))
    prepared = PreparedText(inputs, tokens, None, 0)
    return explain_text(tm, prepared, names, rows=(len(ids) - 2,), layer=layer)


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


def _save(result, path: Path, extra: dict | None = None) -> Path:
    """``attentions`` float32 [L, H, generated, key] (+ ``cross_attentions``) with the token metadata (and ``extra``)."""
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
        **(extra or {}),
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
