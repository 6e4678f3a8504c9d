"""Signals beyond the attention probabilities: gradients of a target with respect to them, and value norms.

The gradient methods (``grad-attention``, ``relevance``; Chefer et al. 2021) need ``dy/dA`` for every
layer's attention probabilities ``A`` and a target ``y`` (a class logit, a token's log-probability);
``value-norm`` (Kobayashi et al. 2020) needs ``||f_h(x_j)||``, the norm of each key position's value
vector after the head's slice of the output projection. Both come from one forward pass (plus one
backward pass for gradients) with a differentiable attention function registered in transformers'
``AttentionInterface`` as ``"attnviz-grad"``. It computes what transformers' eager attention computes --
``A = softmax(q k^T * scaling [softcap] + mask)`` in float32, cast to the query dtype, output ``A @ v``
-- on an eager (fully built) mask, so ``A`` is the very tensor that produces the model's output and its
gradient is the gradient of the model's own computation.

Memory: gradients are never kept per head. A hook on each layer's ``A`` reduces ``(dy/dA ⊙ A)`` to the
head mean of its positive part, float32 ``[N, N]``, as the gradient arrives during the backward pass
(:func:`attnviz.methods.gradients.grad_weighted`); so the result holds one ``[N, N]`` per layer, besides
what autograd itself keeps for the backward pass (the floor of any gradient method). Value norms reduce
in the forward pass in the same way. Parameters do not require gradients during the call (no weight
gradients are computed); the first layer's ``A`` of each stack is a leaf the backward pass runs to.

Faithful by check, at run time: the model output of this forward is compared with the model's own
(e.g. SDPA) output when the caller passes it (``reference``), and each output projection's input is
compared with ``A @ v`` (proof that the projection found for value-norm is the one the attention output
goes through). Both differences are returned (:attr:`Signals.checks`).

Single-stack models (encoders such as BERT/ViT/DeiT, decoder-only language models) and encoder-decoder
models (T5 with its relative position bias, BART...): each attention kind (encoder, decoder, cross) is kept
per layer.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from attnviz.errors import ModelError

GRAD_IMPLEMENTATION = "attnviz-grad"
_ACTIVE: contextvars.ContextVar["_SignalSession | None"] = contextvars.ContextVar("attnviz_signals", default=None)
_UNSUPPORTED_KWARGS = ("s_aux", "sinks")
_PROJECTION_NAMES = ("o_proj", "out_proj", "c_proj", "o", "dense", "proj", "wo", "out_lin")


@dataclass(frozen=True)
class Target:
    """What a gradient method explains: ``kind`` ``"class"`` (the logit of class ``index``, Chefer et al.'s
    choice), ``"token"`` (the log-probability of vocabulary id ``index`` at the prediction made at
    position ``position``) or ``"object"`` (the logit of class ``index`` of object query ``position`` of a
    detector, as Chefer et al. do for DETR); ``label`` names it for people (class label or token text)."""

    kind: str
    index: int
    label: str
    position: int | None = None

    def to_dict(self) -> dict:
        doc = {"kind": self.kind, "index": self.index, "label": self.label,
               "quantity": "log-probability" if self.kind == "token" else "logit"}
        if self.position is not None:
            doc["position"] = self.position
        return doc

    def describe(self) -> str:
        """One line for people: the label with control characters escaped (a newline token reads ``'\\n'``)."""
        label = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in self.label)
        if self.kind == "class":
            return f"class {self.index} '{label}' (its logit)"
        if self.kind == "object":
            return f"object query {self.position}'s class {self.index} '{label}' (its logit)"
        return f"token '{label}' (log-probability, predicted at position {self.position})"


def class_target(logits: torch.Tensor, index: int | None, id2label: Mapping[int, str] | None) -> Target:
    """The class target: ``index`` (0-based; negative from the end), or the top class of ``logits`` ``[1, C]``.

    Raises:
        UsageError: ``index`` outside ``[-C, C)``.
    """
    from attnviz.errors import UsageError

    n = logits.shape[-1]
    if index is None:
        index = int(logits[0].argmax())
    elif not -n <= index < n:
        raise UsageError(f"--target-class {index} is out of range: this model has {n} classes (0..{n - 1})")
    index %= n
    label = (id2label or {}).get(index, f"LABEL_{index}")
    return Target("class", index, str(label))


def target_value(outputs, target: Target) -> torch.Tensor:
    """The scalar ``y`` of ``target`` from a model output with ``logits`` (``[1, C]`` or ``[1, N, V]``)."""
    logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
    if target.kind == "class":
        return logits[0, target.index]
    if target.kind == "object":
        return logits[0, target.position, target.index]
    return torch.log_softmax(logits[0, target.position].float(), dim=-1)[target.index]


@dataclass
class Signals:
    """What :func:`capture_signals` returns.

    - ``grad_kinds``: per attention kind (``"self"``; ``"encoder"``, ``"decoder"``, ``"cross"`` for encoder-decoder
      models), per layer, float32 ``[Q, K]`` ``mean_h (dy/dA_h ⊙ A_h)^+`` (empty when gradients were not asked);
      ``grad_weighted`` is the ``"self"`` entry (single-stack models).
    - ``value_kinds`` / ``value_weighted``: the same for ``mean_h A_h[i, j] * ||f_h(x_j)||`` (empty unless asked).
    - ``target``: what the gradients explain (None without gradients); ``logits``: float32 model output of this
      forward (None for a model without a task head).
    - ``checks``: measured max abs differences (``"logits"`` vs the reference output, ``"projection_input"`` of
      the output projection vs ``A @ v``); ``forward_passes``, ``backward_passes``.
    """

    target: Target | None
    logits: torch.Tensor | None
    grad_kinds: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    value_kinds: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
    checks: dict[str, float] = field(default_factory=dict)
    forward_passes: int = 1
    backward_passes: int = 0

    @property
    def grad_weighted(self) -> tuple[torch.Tensor, ...] | None:
        return self.grad_kinds.get("self")

    @property
    def value_weighted(self) -> tuple[torch.Tensor, ...] | None:
        return self.value_kinds.get("self")


class _SignalSession:
    def __init__(self, gradients: bool, values: bool, projections: Mapping[int, Any], names: Mapping[int, str],
                 encoder_decoder: bool):
        self.gradients = gradients
        self.values = values
        self.projections = projections  # id(attention module) -> output projection module
        self.names = names
        self.encoder_decoder = encoder_decoder
        self.counts: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, int]] = {}
        self.leaves: list[torch.Tensor] = []
        self.grad_maps: dict[tuple[str, int], torch.Tensor] = {}
        self.value_maps: dict[tuple[str, int], torch.Tensor] = {}
        self.pending: dict[int, torch.Tensor] = {}  # projection id -> its expected input A @ v, [Q, H*dv]
        self.projection_diff = 0.0
        self.problem: str | None = None

    @property
    def calls(self) -> int:
        return sum(self.counts.values())

    def attend(self, module, query, key, value, attention_mask, scaling, softcap, bias=None):
        from attnviz.capture import attention_kind
        from attnviz.methods.gradients import grad_weighted, value_weighted

        path = self.names.get(id(module), "")
        kind = attention_kind(path, self.encoder_decoder)
        layer = self.counts.get(kind, 0)
        self.counts[kind] = layer + 1
        self.shapes[kind] = (query.shape[2], key.shape[2])
        heads, kv_heads = query.shape[1], key.shape[1]
        if heads != kv_heads:  # grouped-query attention: query head h reads kv head h // (heads // kv_heads)
            key = key.repeat_interleave(heads // kv_heads, dim=1)
            value = value.repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # [1, H, Q, K]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if bias is not None:  # T5's relative position bias, added before the mask as its eager attention does
            scores = scores + bias
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            else:
                scores = scores + attention_mask[..., : key.shape[-2]]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # [1, H, Q, K]
        if self.gradients:
            if not probs.requires_grad:
                # the first layer of a stack (no parameter requires a gradient here): a leaf the backward pass runs to
                probs.requires_grad_(True)
                self.leaves.append(probs)
            held = probs.detach()

            def hook(grad, key=(kind, layer), held=held):
                self.grad_maps[key] = grad_weighted(held[0], grad[0])
                return grad

            probs.register_hook(hook)
        out = torch.matmul(probs, value)  # [1, H, Q, dv]
        if self.values:
            with torch.no_grad():
                proj = self.projections.get(id(module))
                if proj is None:
                    self.problem = (f"value-norm needs the output projection after {type(module).__name__}, and attnviz "
                                    "found none by name")
                else:
                    norms = projected_value_norms(value[0].detach(), proj)  # [H, K]
                    self.value_maps[(kind, layer)] = value_weighted(probs.detach()[0].float(), norms)
                    self.pending[id(proj)] = out.detach()[0].transpose(0, 1).reshape(out.shape[2], -1)
        return out.transpose(1, 2).contiguous(), probs


def projected_value_norms(value: torch.Tensor, projection) -> torch.Tensor:
    """``||f_h(x_j)||`` for every head and key: float32 ``[H, K]`` from value states ``[H, K, dv]``.

    ``f_h(x_j) = v_j^h W_O^h``: the key's value vector through head ``h``'s slice of the output projection
    (Kobayashi et al. 2020, without the output bias, which every position shares). ``projection`` is the
    output projection module (``nn.Linear``, or GPT-2's ``Conv1D`` whose weight is ``[in, out]``).
    """
    heads, keys, dv = value.shape
    weight = projection.weight
    matrix = weight if type(projection).__name__ == "Conv1D" else weight.t()  # [H*dv, D]
    matrix = matrix.float().reshape(heads, dv, -1)  # [H, dv, D]
    projected = torch.bmm(value.float(), matrix)  # [H, K, D]
    return projected.norm(dim=-1)


def find_projections(model) -> dict[int, Any]:
    """For every attention module, the output projection its attention output goes through (by name:
    ``o_proj``/``out_proj``/``c_proj``/``o``/``dense`` inside it, or its parent's ``output.dense``).

    The guess is proved at run time: :func:`capture_signals` compares each projection's input with ``A @ v``.
    """
    found: dict[int, Any] = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not any(n in ("q_proj", "query", "c_attn", "q", "qkv", "in_proj", "Wqkv", "query_key_value", "v_proj", "value", "v", "q_lin", "v_lin")
                   for n, _ in module.named_children()) and not hasattr(module, "in_proj_weight"):
            continue
        own = dict(module.named_children())
        candidates = [own.get(n) for n in _PROJECTION_NAMES]
        parent = modules.get(name.rsplit(".", 1)[0]) if "." in name else None
        if parent is not None:
            output = getattr(parent, "output", None)
            candidates.append(getattr(output, "dense", None))
            candidates += [getattr(parent, n, None) for n in _PROJECTION_NAMES if n != "dense"]
        for c in candidates:
            if c is not None and hasattr(c, "weight") and getattr(c, "weight").dim() == 2:
                found[id(module)] = c
                break
    return found


def _grad_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """Registered as ``"attnviz-grad"``: eager attention whose probabilities carry hooks (see module docstring)."""
    session = _ACTIVE.get()
    if session is None:  # not inside capture_signals (the implementation is restored there): the fast path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    for name in _UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            session.problem = f"attention with '{name}'"
    if query.shape[0] != 1:
        session.problem = f"a batch of {query.shape[0]} sequences"
    if attention_mask is None and query.shape[2] > 1 and bool(is_causal if is_causal is not None else getattr(module, "is_causal", False)):
        session.problem = "a causal attention call without a mask"
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    return session.attend(module, query, key, value, attention_mask, scaling, kwargs.get("softcap"), kwargs.get("position_bias"))


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(GRAD_IMPLEMENTATION, _grad_attention)
    AttentionMaskInterface.register(GRAD_IMPLEMENTATION, eager_mask)
    _REGISTERED = True


def _switch(model, name: str) -> bool:
    """Set the model's attention implementation; where a sub-model (DETR's ResNet backbone) takes none, only the
    model's own (``{"": name}``). True if it took it."""
    for value in (name, {"": name}):
        try:
            model.set_attn_implementation(value)
        except (ValueError, KeyError, ImportError, NotImplementedError):
            continue
        if model.config._attn_implementation == name:
            return True
    return False


def capture_signals(
    model,
    inputs: Mapping[str, torch.Tensor],
    target: Callable[[Any], Target] | Target | None,
    *,
    gradients: bool = True,
    values: bool = False,
    reference: torch.Tensor | None = None,
    layers: Mapping[str, int] | None = None,
) -> Signals:
    """One forward pass (and one backward pass for ``gradients``) that yields the per-layer signals.

    Args:
        model: a loaded transformers model (eval mode) that dispatches attention through the ``AttentionInterface``:
            single-stack, or encoder-decoder (T5, BART...: the kinds are told apart by module path, as in
            :func:`attnviz.capture.attention_kind`).
        inputs: model inputs of one sequence (``pixel_values`` ``[1, 3, H, W]``, ``input_ids`` ``[1, N]``...).
        target: the :class:`Target` or a function ``outputs -> Target`` (e.g. the top class); needed for ``gradients``.
        gradients: compute ``Signals.grad_weighted``.
        values: compute ``Signals.value_weighted``.
        reference: the model's own output on the same inputs (e.g. from the SDPA capture), float: its ``logits``,
            or for a model without a task head its ``last_hidden_state``; the maximum absolute difference to this
            forward's is ``Signals.checks["logits"]`` (or ``["last_hidden_state"]``).
        layers: the attention layers per kind the model has (``{"self": 12}``; for encoder-decoder models
            ``encoder``, ``decoder``, ``cross``), e.g. from the config or the capture: a layer whose attention did
            not come through this function (a module with its own attention code) is refused, never left out of
            relevance's product without a word.

    Returns:
        :class:`Signals`, float32 on the CPU. The model's attention implementation and its parameters'
        ``requires_grad`` are restored afterwards, also when the call raises.

    Raises:
        ModelError: a model that does not take the attention function, an attention call this function cannot
            reproduce exactly (attention sinks, a batch, a causal call without a mask), or fewer attention layers
            through it than ``layers`` says.
    """
    _register()
    previous = model.config._attn_implementation
    if not _switch(model, GRAD_IMPLEMENTATION):
        raise ModelError(f"{model.config.model_type} does not dispatch attention through transformers' AttentionInterface, "
                         "so attnviz cannot take gradients of its attention probabilities")
    names = {id(m): name for name, m in model.named_modules()}
    session = _SignalSession(gradients, values, find_projections(model) if values else {}, names,
                             bool(getattr(model.config, "is_encoder_decoder", False)))
    params = [(p, p.requires_grad) for p in model.parameters()]
    handles = []
    if values:
        for proj in {id(p): p for p in session.projections.values()}.values():
            def check_input(mod, args, session=session):
                pending = session.pending.pop(id(mod), None)
                if pending is not None:
                    x = args[0][0].detach().float()  # [Q, H*dv]
                    session.projection_diff = max(session.projection_diff, float((x - pending.float()).abs().max()))
            handles.append(proj.register_forward_pre_hook(check_input))
    token = _ACTIVE.set(session)
    try:
        for p, _ in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.set_grad_enabled(gradients):
            outputs = model(**inputs)
            if session.problem is not None:
                raise ModelError(f"attnviz cannot reproduce {model.config.model_type}'s attention exactly: {session.problem}")
            if session.calls == 0:
                raise ModelError(f"no attention call of {model.config.model_type} went through transformers' AttentionInterface")
            tgt = target(outputs) if callable(target) else target
            y = target_value(outputs, tgt) if tgt is not None else None
            backward = 0
            if gradients:
                if y is None or not session.leaves:
                    raise ModelError("no target or no attention probabilities to take gradients for")
                torch.autograd.grad(y, session.leaves, allow_unused=True)
                backward = 1
            logits = outputs.logits.detach().float().cpu() if getattr(outputs, "logits", None) is not None else None
            hidden = getattr(outputs, "last_hidden_state", None)
            hidden = hidden.detach().float().cpu() if hidden is not None and logits is None else None
    finally:
        _ACTIVE.reset(token)
        for h in handles:
            h.remove()
        for p, flag in params:
            p.requires_grad_(flag)
        _switch(model, previous)
    missing = {k: (n, session.counts.get(k, 0)) for k, n in (layers or {}).items() if session.counts.get(k, 0) != n}
    if missing:
        said = ", ".join(f"{k}: {got} of {n}" for k, (n, got) in missing.items())
        raise ModelError(f"only some of {model.config.model_type}'s attention layers went through attnviz's gradient "
                         f"pass ({said}); attnviz refuses to show methods that would leave layers out")
    checks: dict[str, float] = {}
    if reference is not None and logits is not None:
        checks["logits"] = float((logits - reference.detach().float().cpu()).abs().max())
    elif reference is not None and hidden is not None:  # a model without a task head: its last hidden state
        checks["last_hidden_state"] = float((hidden - reference.detach().float().cpu()).abs().max())
    if values:
        if session.pending:
            raise ModelError("the output projection found for value-norm was not called after its attention")
        checks["projection_input"] = session.projection_diff
    grad_kinds: dict[str, tuple[torch.Tensor, ...]] = {}
    value_kinds: dict[str, tuple[torch.Tensor, ...]] = {}
    for kind, count in session.counts.items():
        if gradients:  # a layer whose probabilities do not reach the target has gradient 0
            grad_kinds[kind] = tuple(session.grad_maps.get((kind, l), torch.zeros(session.shapes[kind])) for l in range(count))
        if values:
            value_kinds[kind] = tuple(session.value_maps[(kind, l)] for l in range(count))
    return Signals(tgt, logits, grad_kinds, value_kinds, checks, 1, backward)
