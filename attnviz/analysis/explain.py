"""Explanations of one prediction by registered methods: the [CLS] (or mean) row of each method's map.

:func:`explain_image` runs what the requested methods need -- the probabilities already captured (for
``attention`` and ``rollout``), plus one forward (and backward) pass of :func:`attnviz.signals.capture_signals`
for ``grad-attention``, ``relevance`` and ``value-norm`` -- and returns one :class:`MethodMap` per method,
each the raw ``[rows, cols]`` row over the patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from attnviz.errors import ModelError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from attnviz.signals import Target
    from attnviz.types import ImageAttention

#: Methods whose maps depend on a target (a class or a token).
TARGETED = ("grad-attention", "relevance")


@dataclass(frozen=True)
class MethodMap:
    """One method's map over the input units: ``values`` float32 (``[rows, cols]`` patches, ``[N]`` tokens), raw
    (the unit is ``unit``); ``layer`` the layer it reads (None: every layer); ``row`` which query row it is
    (``"[CLS]"``, ``"mean of all tokens"``, a token)."""

    method: str
    title: str
    source: str
    unit: str
    layer: int | None
    row: str
    values: "torch.Tensor"
    positions: tuple[int, ...] = ()  # text: the token positions of the rows
    rows_in_keys: bool = True  # False: the rows are decoder positions and the values run over the source tokens

    @property
    def needs_target(self) -> bool:
        return self.method in TARGETED

    def describe(self, target: "Target | None" = None) -> str:
        """One sentence for a subtitle: the method, its source, what row is shown, the target."""
        where = f"layer {self.layer}" if self.layer is not None else "all layers"
        over = "the tokens" if self.positions else "the patches"
        text = f"{self.source}. Shown: the {self.row} row over {over}, {where}"
        if target is not None and self.needs_target:
            text += f"; target: {target.describe()}"
        return text + "."

    def to_list(self, digits: int = 8) -> list:
        return [[round(float(v), digits) for v in row] for row in self.values.tolist()] if self.values.dim() == 2 \
            else [round(float(v), digits) for v in self.values.tolist()]


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain_image` returns: the ``target`` (None when no method needs one), one map per method in
    the order asked, and the run-time ``checks`` of the signal pass (see :class:`attnviz.signals.Signals`)."""

    target: "Target | None"
    maps: tuple[MethodMap, ...]
    checks: dict = field(default_factory=dict)
    forward_passes: int = 0
    backward_passes: int = 0

    def get(self, name: str) -> MethodMap:
        return next(m for m in self.maps if m.method == name)

    def to_json(self) -> dict:
        """``method``/``target``/``method_map`` (the first method asked: its ``[rows, cols]`` map), every method under
        ``methods``, and the signal pass's ``method_checks`` (the ``--json`` of ``attnviz image`` and ``detect``)."""
        first = self.maps[0]
        return {
            "method": first.method,
            "target": self.target.to_dict() if self.target is not None else None,
            "method_map": first.to_list(),
            "methods": [{"name": m.method, "source": m.source, "layer": m.layer, "row": m.row, "unit": m.unit,
                         "target": m.needs_target, "map": m.to_list()} for m in self.maps],
            "method_checks": self.checks_json(),
        }

    def checks_json(self) -> dict:
        return {"max_abs_diff": {k: float(f"{v:.3g}") for k, v in self.checks.items()},
                "forward_passes": self.forward_passes, "backward_passes": self.backward_passes}


def parse_methods(text: str | Sequence[str] | None, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    """``"relevance,grad-attention"`` -> registered names, in order, without repeats; ``"all"`` is every name in
    ``allowed`` (default: :data:`IMAGE_METHODS`, which text and generation share).

    Raises:
        UsageError: an unknown name (the message lists the registered ones), or one outside ``allowed``.
    """
    from attnviz import methods

    allowed = tuple(allowed or IMAGE_METHODS)
    if not text:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    if not any(str(p).strip() for p in parts):
        raise UsageError("--method is empty; name at least one method, or all")
    out: list[str] = []
    for p in (p.strip() for p in parts):
        if not p:
            continue
        if p == "all":
            out += [m for m in allowed if m not in out]
            continue
        methods.get(p)
        if p not in allowed:
            raise UsageError(f"--method {p} does not apply here; use one of {', '.join(allowed)}")
        if p not in out:
            out.append(p)
    return tuple(out)


def applicable_methods(text, names: tuple[str, ...], *, rollout: bool = True, targeted: bool = True) -> tuple[str, ...]:
    """``names`` less the methods that cannot apply to this model when the request said ``all`` (a notice names
    them): rollout where there is cross-attention (``rollout`` False), the gradient methods without a task head
    (``targeted`` False). Named explicitly, they stay, and are refused with a reason later."""
    import warnings

    from attnviz.errors import AttnvizWarning

    said_all = "all" in ([p.strip() for p in text.split(",")] if isinstance(text, str) else list(text or ()))
    if not said_all:
        return names
    dropped = [n for n in names if (n == "rollout" and not rollout) or (n in TARGETED and not targeted)]
    if dropped:
        verb = "does" if len(dropped) == 1 else "do"
        warnings.warn(f"--method all: {', '.join(dropped)} {verb} not apply to this model and left out", AttnvizWarning,
                      stacklevel=2)
    return tuple(n for n in names if n not in dropped)


#: Methods with a map over the patches of a photo (``head-fusion`` is ``attention`` with the heads fused).
IMAGE_METHODS = ("attention", "rollout", "grad-attention", "relevance", "value-norm")


def image_row(result: "ImageAttention", matrix: "torch.Tensor") -> "torch.Tensor":
    """The [CLS] row (mean row for a model without [CLS]) of a ``[T, T]`` map over the patches: ``[rows, cols]``."""
    from attnviz.analysis.patches import _grid

    row = matrix[result.cls_index] if result.cls_index is not None else matrix.mean(dim=0)
    return _grid(result, row).float().contiguous()


def explain_image(
    im,
    result: "ImageAttention",
    names: Sequence[str],
    *,
    layer: int = -1,
    target_class: int | None = None,
    rollout: "torch.Tensor | None" = None,
) -> Explanation:
    """Each method's [CLS] row over the patches for the photo of ``result`` (an :class:`ImageAttention` of ``im``).

    Args:
        im: the :class:`attnviz.inputs.patches.ImageModel` that produced ``result`` (weights loaded).
        names: method names (:data:`IMAGE_METHODS`).
        layer: the layer of the one-layer methods (attention, grad-attention, value-norm); 0-based.
        target_class: the class the gradient methods explain (default: the top class).
        rollout: the run's rollout row ``[rows, cols]`` (else computed from ``result``).

    Returns:
        :class:`Explanation`.

    Raises:
        UsageError: a gradient method on a model without a classification head. ModelError: the signal pass
        failed or its run-time checks differ from the model's own output by more than 1e-4 (float32).
    """
    import torch

    from attnviz import methods
    from attnviz.analysis.patches import cls_attention, rollout_map
    from attnviz.inputs.patches import preprocess
    from attnviz.signals import capture_signals, class_target

    n_layers = result.attention.num_layers
    layer %= n_layers
    row = "[CLS]" if result.cls_index is not None else "mean of all tokens"
    targeted = [n for n in names if n in TARGETED]
    if (targeted or target_class is not None) and not im.info.classifier:
        raise UsageError(f"--method {targeted[0] if targeted else 'with --target-class'}: '{im.source.model_id}' has no "
                         "classification head, so there is no class to explain; use attention, rollout or value-norm")
    signals = None
    if targeted or "value-norm" in names:
        pixel_values = preprocess(im, result.image)[0]
        param = next(im.model.parameters())
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        inputs = {"pixel_values": pixel_values}
        with torch.inference_mode():
            reference = _reference(im.model(**inputs))
        id2label = getattr(im.model.config, "id2label", None)
        target = (lambda out: class_target(out.logits.detach(), target_class, id2label)) if targeted else None
        signals = capture_signals(im.model, inputs, target, gradients=bool(targeted), values="value-norm" in names,
                                  reference=reference, layers={"self": n_layers})
        _check_signals(im, signals, reference)
    maps = []
    for name in names:
        m = methods.get(name)
        if name == "attention":
            values, at = cls_attention(result, layer).mean(dim=0), layer
        elif name == "rollout":
            values, at = (rollout if rollout is not None else rollout_map(result)), None
        else:
            per_layer = signals.grad_weighted if m.reads == "grad-weighted" else signals.value_weighted
            out = m(per_layer, layer=layer) if not m.aggregates else m(per_layer)
            values, at = image_row(result, out.values), out.layer
        unit = "probability (head mean)" if name == "attention" else ("rollout weight" if name == "rollout" else m.unit)
        maps.append(MethodMap(name, m.title, m.source, unit, at, row, values.float()))
    return Explanation(signals.target if signals is not None else None, tuple(maps), dict(signals.checks) if signals else {},
                       signals.forward_passes + 1 if signals else 0,
                       signals.backward_passes if signals else 0)


#: Methods with a row over the tokens of a text.
TEXT_METHODS = IMAGE_METHODS


def default_text_row(tm, prepared) -> int:
    """The query row a text method explains when no ``--token`` is given: the [CLS] token where the tokenizer has one
    in the input (BERT-style classifiers pool it), else the last token (GPT-style classifiers and language models
    predict from it). A position, never assumed to be 0."""
    ids = prepared.inputs["input_ids"][0].tolist()
    cls = getattr(tm.tokenizer, "cls_token_id", None)
    if cls is not None and cls in ids and tm.head_kind != "causal-lm":
        return ids.index(cls)
    return len(ids) - 1


def text_target(tm, prepared, logits, row: int, target_class: int | None) -> "Target":
    """What the gradient methods explain for a text (see README "Methods"):

    - a sequence classifier: the logit of ``target_class`` (default: the top class);
    - a causal language model: the log-probability of the token after ``row`` (the prediction made at ``row``), or
      of the top predicted token when ``row`` is the last position;
    - a masked language model: the log-probability of the token at ``row`` itself, read at ``row``.

    Raises:
        UsageError: ``target_class`` for a model that is not a classifier.
    """
    from attnviz.signals import Target, class_target

    kind = tm.head_kind
    if kind == "seq2seq-lm":  # the decoder side: the next target token, read at decoder position ``row``
        ids = prepared.inputs["decoder_input_ids"][0].tolist()
        nxt = ids[row + 1] if row + 1 < len(ids) else int(logits[0, row].argmax())
        return Target("token", int(nxt), tm.tokenizer.decode([nxt]), position=row)
    if kind == "classifier":
        return class_target(logits, target_class, getattr(tm.model.config, "id2label", None))
    if target_class is not None:
        raise UsageError(f"--target-class is for classifiers; '{tm.source.model_id}' is a {kind or 'base'} model")
    ids = prepared.inputs["input_ids"][0].tolist()
    if kind == "causal-lm":
        nxt = ids[row + 1] if row + 1 < len(ids) else int(logits[0, row].argmax())
    else:
        nxt = ids[row]
    label = tm.tokenizer.decode([nxt])
    return Target("token", int(nxt), label, position=row)


def explain_text(tm, prepared, names: Sequence[str], *, rows: Sequence[int], layer: int = -1,
                 target_class: int | None = None) -> Explanation:
    """Each method's rows over the tokens of one text: ``MethodMap.values`` float32 ``[len(rows), N]``.

    Args:
        tm: a :class:`attnviz.inputs.tokens.TextModel` with weights (with its task head for the gradient methods).
        prepared: the text (:func:`attnviz.inputs.tokens.prepare_text`).
        names: method names (:data:`TEXT_METHODS`).
        rows: the query positions to show (the focus token's, or :func:`default_text_row`); the gradient methods'
            target is read at ``rows[-1]`` (:func:`text_target`).
        layer: the layer of the one-layer methods (0-based, negative from the end).

    Raises:
        UsageError: a gradient method on a model without a task head, an encoder-decoder model.
        ModelError: the signal pass differs from the model's own output (see :func:`explain_image`).
    """
    import torch

    from attnviz import methods
    from attnviz.capture import CapturePlan, capture
    from attnviz.inputs.tokens import model_inputs
    from attnviz.types import SELF

    if tm.encoder_decoder:
        return _explain_seq2seq(tm, prepared, names, rows=rows, layer=layer)
    model = tm.model
    inputs = model_inputs(tm, prepared)
    n_layers = tm.num_layers
    layer %= n_layers
    targeted = [n for n in names if n in TARGETED]
    has_head = tm.head_kind is not None and not getattr(model, "attnviz_new_head", ()) and type(model).__name__.endswith(
        ("ForSequenceClassification", "ForCausalLM", "LMHeadModel", "ForMaskedLM"))
    if targeted and not has_head:
        raise UsageError(f"--method {targeted[0]} explains a prediction, but '{tm.source.model_id}' has no trained task head "
                         "(a classifier or language-model head) in its checkpoint; use attention, rollout or value-norm")
    labels = tuple(prepared.tokens.tokens[r] for r in rows)
    per_row = torch.tensor(list(rows))
    maps_by_name: dict[str, tuple] = {}
    if "attention" in names or "rollout" in names:
        cap = capture(model, inputs, CapturePlan(layers=frozenset({layer}), rollout="rollout" in names, need_outputs=False))
        maps = cap.attention[SELF]
        if "attention" in names:
            maps_by_name["attention"] = (maps.layer(layer).mean(dim=0)[per_row], layer)
        if "rollout" in names:
            maps_by_name["rollout"] = (maps.rollout[per_row], None)
    signals = None
    forward = 1 if maps_by_name else 0
    if targeted or "value-norm" in names:
        signals, passes = _text_signals(tm, prepared, inputs, bool(targeted), "value-norm" in names, rows[-1],
                                        target_class)
        forward += passes
    out = []
    for name in names:
        m = methods.get(name)
        if name in maps_by_name:
            values, at = maps_by_name[name]
        else:
            per_layer = signals.grad_weighted if m.reads == "grad-weighted" else signals.value_weighted
            res = m(per_layer, layer=layer) if not m.aggregates else m(per_layer)
            values, at = res.values[per_row], res.layer
        unit = "probability (head mean)" if name == "attention" else ("rollout weight" if name == "rollout" else m.unit)
        out.append(MethodMap(name, m.title, m.source, unit, at, ", ".join(labels), values.float().cpu(), tuple(rows)))
    return Explanation(signals.target if signals is not None else None, tuple(out),
                       dict(signals.checks) if signals else {}, forward, signals.backward_passes if signals else 0)


def _reference(outputs):
    """The model's own output a signal pass is checked against: its ``logits``, else its ``last_hidden_state`` (float)."""
    out = getattr(outputs, "logits", None)
    if out is None:
        out = outputs.last_hidden_state
    return out.detach().float()


def _check_signals(loaded, signals, reference) -> None:
    """Refuse a signal pass whose run-time checks (:attr:`attnviz.signals.Signals.checks`) exceed 1e-4 (float32; 5e-2
    otherwise) relative to the logits' scale: ``loaded`` is the text or image model (``.model``, ``.source``)."""
    import torch

    tm = loaded
    param = next(tm.model.parameters())
    tol = 1e-4 if param.dtype == torch.float32 else 5e-2
    scale = max(1.0, float(reference.abs().max())) if reference is not None else 1.0
    bad = {k: v for k, v in signals.checks.items() if v > tol * scale}
    if bad:
        raise ModelError(f"the gradient/value pass of '{tm.source.model_id}' differs from its own forward "
                         f"({', '.join(f'{k} {v:.2g}' for k, v in bad.items())}); attnviz refuses to show it")


def _text_signals(tm, prepared, inputs, gradients: bool, values: bool, row: int, target_class):
    """The signal pass of a text model, checked against its own forward: ``(Signals, forward passes)``."""
    import torch

    from attnviz.signals import capture_signals

    with torch.inference_mode():
        reference = _reference(tm.model(**inputs))
    forward = 1
    target = text_target(tm, prepared, reference, row, target_class) if gradients else None
    layers = ({"encoder": tm.num_layers, "decoder": tm.num_decoder_layers, "cross": tm.num_decoder_layers}
              if tm.encoder_decoder else {"self": tm.num_layers})
    signals = capture_signals(tm.model, inputs, target, gradients=gradients, values=values, reference=reference,
                              layers=layers)
    _check_signals(tm, signals, reference)
    return signals, forward + signals.forward_passes


def _explain_seq2seq(tm, prepared, names: Sequence[str], *, rows: Sequence[int], layer: int) -> Explanation:
    """:func:`explain_text` for an encoder-decoder model: ``rows`` are decoder positions (the target side), the values
    run over the source tokens -- the cross-attention of decoder layer ``layer`` for attention, grad-attention and
    value-norm, and ``R^qs`` of Chefer et al.'s encoder-decoder rules for relevance."""
    import torch

    from attnviz import methods
    from attnviz.capture import CapturePlan, capture
    from attnviz.inputs.tokens import model_inputs
    from attnviz.types import CROSS

    if "rollout" in names:
        raise UsageError("--method rollout has no rule for cross-attention; for an encoder-decoder model use relevance "
                         "(Chefer et al.'s encoder-decoder rules), attention, grad-attention or value-norm")
    targeted = [n for n in names if n in TARGETED]
    model = tm.model
    has_head = tm.head_kind == "seq2seq-lm" and type(model).__name__.endswith("ForConditionalGeneration") \
        and not getattr(model, "attnviz_new_head", ())
    if targeted and not has_head:
        raise UsageError(f"--method {targeted[0]} explains a prediction, but '{tm.source.model_id}' has no trained "
                         "language-model head in its checkpoint; use attention or value-norm")
    inputs = model_inputs(tm, prepared)
    decoder_layers = tm.num_decoder_layers
    if not -decoder_layers <= layer < decoder_layers:
        raise UsageError(f"--layer {layer}: the methods read the decoder's cross-attention, and the decoder has "
                         f"{decoder_layers} layers (0..{decoder_layers - 1})")
    layer %= decoder_layers
    per_row = torch.tensor(list(rows))
    labels = tuple(prepared.target_tokens.tokens[r] for r in rows)
    found: dict[str, tuple] = {}
    forward = 0
    if "attention" in names:
        cap = capture(model, inputs, CapturePlan(layers=frozenset({layer}), need_outputs=False))
        found["attention"] = (cap.attention[CROSS].layer(layer).mean(dim=0)[per_row], layer)
        forward += 1
    signals = None
    if targeted or "value-norm" in names:
        signals, passes = _text_signals(tm, prepared, inputs, bool(targeted), "value-norm" in names, rows[-1], None)
        forward += passes
        if targeted:
            cross = signals.grad_kinds[CROSS]
            found["grad-attention"] = (cross[layer][per_row], layer)
            rel = methods.get("relevance")(signals.grad_kinds["encoder"], decoder=signals.grad_kinds["decoder"], cross=cross)
            found["relevance"] = (rel.values[per_row], None)
        if "value-norm" in names:
            found["value-norm"] = (signals.value_kinds[CROSS][layer][per_row], layer)
    out = []
    for name in names:
        m = methods.get(name)
        values, at = found[name]
        unit = "probability (head mean)" if name == "attention" else m.unit
        title = m.title + (" (cross-attention)" if name != "relevance" else "")
        out.append(MethodMap(name, title, m.source, unit, at, ", ".join(labels), values.float().cpu(), tuple(rows), False))
    return Explanation(signals.target if signals is not None else None, tuple(out),
                       dict(signals.checks) if signals else {}, forward, signals.backward_passes if signals else 0)


#: Methods with a map of a detected object over the photo (no rollout: it has no rule for cross-attention).
DETECT_METHODS = ("attention", "grad-attention", "relevance", "value-norm")


def explain_detection(det, inputs, captured, detection, names: Sequence[str], *, layer: int = -1) -> Explanation:
    """Each method's map of one detected object over the feature map (DETR-style: the object query's row over the
    encoder tokens) or the patch grid (YOLOS: the detection token's row over the patches): ``[rows, cols]`` each.

    The target is the logit of the object's class at its query (Chefer et al. 2021 do the same for DETR).
    DETR-style models use the encoder-decoder rules for relevance and decoder layer ``layer``'s cross-attention for the
    one-layer methods; YOLOS is a single stack (the rules of a ViT, read at the detection token's row).

    Raises:
        UsageError: a deformable-attention model (sampling points, no attention matrix for these rules), rollout, a
        model without a detection head. ModelError: the signal pass differs from the model's own output.
    """
    import torch

    from attnviz import methods
    from attnviz.signals import Target, capture_signals
    from attnviz.types import CROSS

    if captured.deformable is not None:
        raise UsageError(f"--method: {det.model_type} uses deformable attention (sampling points), which has no "
                         "attention matrix for these methods; DETR, Conditional DETR and YOLOS have one")
    bad = [n for n in names if n not in DETECT_METHODS]
    if bad:
        raise UsageError(f"--method {bad[0]} has no rule for a detector's object queries; use one of {', '.join(DETECT_METHODS)}")
    targeted = [n for n in names if n in TARGETED]
    if targeted and not det.head:
        raise UsageError(f"--method {targeted[0]}: '{det.source.model_id}' has no detection head, so no object to explain")
    param = next(det.model.parameters())
    inputs = {k: (v.to(param.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
    logits = captured.outputs.logits.detach().float()
    q = detection.query
    cls = int(logits[0, q, :-1].argmax())  # the last class is "no object"
    target = Target("object", cls, detection.label, position=q)
    rows_, cols_ = captured.levels[0]
    num_layers = int(captured.cross.shape[0])
    layer %= num_layers
    found = {"attention": (captured.cross[layer, :, q, :].mean(dim=0), layer)}
    signals = None
    forward = 0
    if targeted or "value-norm" in names:
        encoder = getattr(det.model.config, "encoder_layers", None)
        layers = {"self": num_layers} if captured.yolos else \
            {"decoder": num_layers, "cross": num_layers, **({"encoder": encoder} if isinstance(encoder, int) else {})}
        signals = capture_signals(det.model, inputs, target if targeted else None, gradients=bool(targeted),
                                  values="value-norm" in names, reference=logits, layers=layers)
        forward += signals.forward_passes
        _check_signals(det, signals, logits)
        if captured.yolos:
            t = signals.grad_kinds.get("self", signals.value_kinds.get("self"))[0].shape[-1]
            row, patches = t - det.num_queries + q, slice(1, 1 + rows_ * cols_)
            if targeted:
                found["grad-attention"] = (signals.grad_kinds["self"][layer][row, patches], layer)
                found["relevance"] = (methods.get("relevance")(signals.grad_kinds["self"]).values[row, patches], None)
            if "value-norm" in names:
                found["value-norm"] = (signals.value_kinds["self"][layer][row, patches], layer)
        else:
            if targeted:
                cross = signals.grad_kinds[CROSS]
                found["grad-attention"] = (cross[layer][q], layer)
                rel = methods.get("relevance")(signals.grad_kinds["encoder"], decoder=signals.grad_kinds["decoder"], cross=cross)
                found["relevance"] = (rel.values[q], None)
            if "value-norm" in names:
                found["value-norm"] = (signals.value_kinds[CROSS][layer][q], layer)
    out = []
    for name in names:
        m = methods.get(name)
        values, at = found[name]
        unit = "probability (head mean)" if name == "attention" else m.unit
        out.append(MethodMap(name, m.title, m.source, unit, at, f"object query {q}",
                             torch.as_tensor(values).float().reshape(rows_, cols_).contiguous()))
    return Explanation(target if targeted else None, tuple(out), dict(signals.checks) if signals else {}, forward,
                       signals.backward_passes if signals else 0)
