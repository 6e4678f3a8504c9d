"""Attention while a decoder generates: a token-by-token decoding loop over the capture engine.

The model runs with its own KV cache and fast attention (SDPA through attnviz's
``"attnviz"`` attention function, see :mod:`attnviz.capture`). Every decoding step
is one :func:`attnviz.capture.capture` call on the one new token with
``CapturePlan(rows=(-1,), cross_rows=(-1,))``: the new token's query row in every
layer and head (and its cross-attention row) is recomputed exactly from the
query/key states, so memory grows as O(L*H*(P+T)*T), never with ``[N, N]`` maps.

Public entry points: :func:`load_generation_model`, :func:`attend_generation`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from attnviz.capture import CapturePlan, _lazy_zeros, capture
from attnviz.errors import ModelError, UsageError
from attnviz.models import LoadOptions, load_config, load_model_for_capture, resolve_model
from attnviz.inputs.tokens import TextModel, _max_positions, _token_info, load_tokenizer
from attnviz.types import CROSS, DECODER, SELF, GenerationAttention, TokenInfo

#: The plan of every decoding step: the new token's row in every layer and head, self- and cross-attention.
STEP_PLAN = CapturePlan(rows=(-1,), cross_rows=(-1,))


def load_generation_model(name: str, options: LoadOptions = LoadOptions()) -> TextModel:
    """Load a model with its language-model head (``AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM``) and tokenizer.

    Raises:
        ModelError: not found, no fast tokenizer, or not a generative text model.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    source = resolve_model(name)
    config = load_config(source, options)
    check_generative(config, name)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    tokenizer = load_tokenizer(source, options)
    model = load_model_for_capture(source, auto, options)
    head = getattr(model, "attnviz_new_head", ())
    if head and not options.random_weights_ok:
        raise ModelError(
            f"'{name}': the checkpoint has no trained language-model head (missing: {head[0]}), so the generated tokens "
            "would be random; refusing (--random-weights-ok to generate anyway)"
        )
    return TextModel(source, model, tokenizer, _max_positions(model.config, tokenizer))


#: Encoders whose transformers "causal LM" class only works as a decoder (``is_decoder=True``, set when they are
#: fine-tuned as one): loaded as they are, they attend both ways and their LM head is untrained for generation.
ENCODER_TYPES = frozenset({
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert", "rembert",
    "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl", "xmod",
})


def check_generative(config, name: str) -> None:
    """Refuse, in one line, a model ``attnviz generate`` cannot run: another modality (naming the command that
    takes it), or a bidirectional text encoder (BERT, RoBERTa...) not configured as a decoder.

    Raises:
        ModelError: (exit 3) as above.
    """
    from attnviz.inputs import TEXT, require_modality

    require_modality(config, name, TEXT, command="generate")
    model_type = getattr(config, "model_type", "")
    if model_type in ENCODER_TYPES and not getattr(config, "is_decoder", False) and not getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"'{name}' is a {model_type} encoder (bidirectional attention, no causal language-model head): attnviz generate "
            "needs a decoder (causal LM) or an encoder-decoder model; use 'attnviz text' to see its attention"
        )


def _eos_ids(tm: TextModel) -> set[int]:
    ids = getattr(getattr(tm.model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tm.tokenizer.eos_token_id
    if ids is None:
        return set()
    return {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}


def _prompt_text(tm: TextModel, prompt: str, chat: bool) -> str:
    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty" if not prompt else "the prompt is only whitespace")
    if not chat:
        return prompt
    if not getattr(tm.tokenizer, "chat_template", None):
        raise UsageError(f"--chat: the tokenizer of '{tm.source.model_id}' has no chat template")
    return tm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)


def token_label(tokenizer, token_id: int) -> str:
    """A display label for one generated token id: its decoded text, stripped (``␣`` for whitespace; ``<id N>`` for
    an id past the tokenizer's vocabulary, which a model whose embedding has spare rows can generate)."""
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False)
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    if token is None:  # an id past the tokenizer's vocabulary (the model's embedding has spare rows)
        return f"<id {int(token_id)}>"
    if "\ufffd" in text:  # part of a multi-byte character: show the token itself
        return token
    return text.strip() or ("␣" if text else token)


def _accepts(model, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


class _Chooser:
    """Picks the next token: greedy (argmax) or sampling with transformers' temperature / top-p warpers."""

    def __init__(self, sample: bool, temperature: float, top_p: float, seed: int | None, device):
        if temperature <= 0:
            raise UsageError(f"--temperature must be > 0, not {temperature}")
        if not 0 < top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], not {top_p}")
        self.sample = sample
        self.warpers = None
        self.generator = None
        if sample:
            from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

            warpers = []
            if temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(temperature))
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
            self.warpers = LogitsProcessorList(warpers)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(0 if seed is None else int(seed))

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor) -> int:
        """``logits``: float ``[V]`` of the last position; ``ids``: int64 ``[1, n]`` so far. Returns the token id."""
        if not self.sample:
            return int(torch.argmax(logits))
        scores = self.warpers(ids, logits[None].float())
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt already turned into model inputs by someone else (a vision-language model's processor):
    ``ids`` the prompt's token ids (image placeholders expanded as the processor expands them), ``tokens`` their
    :class:`TokenInfo`, ``extra`` the other inputs of the first (prefill) forward pass only (``pixel_values``,
    ``image_grid_thw``, ``image_sizes``, ``pixel_attention_mask``, ``mm_token_type_ids``...: tensors, batch of one).
    It is never truncated: a prompt over the model's positions is refused."""

    ids: tuple[int, ...]
    tokens: TokenInfo
    extra: Mapping[str, Any] = field(default_factory=dict)


def attend_generation(
    prompt: str,
    model: TextModel | str,
    *,
    max_new_tokens: int = 32,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    chat: bool = False,
    stop_at_eos: bool = True,
    options: LoadOptions = LoadOptions(),
    progress: Callable[[int, int], None] | None = None,
    verify: bool = True,
    prepared: PreparedPrompt | None = None,
) -> GenerationAttention:
    """Generate up to ``max_new_tokens`` tokens and capture each generated token's attention row.

    Decoder-only models continue ``prompt``; encoder-decoder models (T5, BART,
    Marian...) read it as the source and generate the target from the decoder
    start token. Greedy decoding by default; ``sample=True`` draws from the
    softmax after transformers' ``TemperatureLogitsWarper``/``TopPLogitsWarper``
    with a ``torch.Generator`` seeded with ``seed`` (0 if None), so a run is
    reproducible. No other logits processors (repetition penalty...) apply.
    Generation stops after an end-of-sequence token (kept as the last
    generated token) unless ``stop_at_eos=False``.

    Each step is one forward pass of the new token with the KV cache, captured
    with ``CapturePlan(rows=(-1,), cross_rows=(-1,))``; one extra step runs after
    the last token to capture its own row. Memory: the result,
    ``L * H * T * (P + T)`` float32 values (plus ``L * H * T * P`` for
    cross-attention), and the model's KV cache. Models that do not dispatch
    through transformers' ``AttentionInterface`` (ALiBi models such as BLOOM)
    fall back to eager ``output_attentions`` (``backend == "eager"``, with a
    ``notice``); their prompt pass then holds every layer's ``[P, P]`` maps for a
    moment. A decoder-only model runs with a plain ``DynamicCache``: sliding-window
    layers keep every key and their mask cuts the window, so every layer's row
    of a step covers the same key positions.

    Args:
        prompt: the text to continue (or translate/summarise, for encoder-decoder models).
        model: a :class:`attnviz.inputs.tokens.TextModel` from :func:`load_generation_model`, or a name for it.
        max_new_tokens: at most this many tokens (>= 1).
        sample, temperature, top_p, seed: sampling instead of greedy decoding.
        chat: wrap the prompt in the tokenizer's chat template (one user turn,
            generation prompt added).
        progress: called with ``(step, max_new_tokens)`` after each step.
        verify: for a model type outside :data:`attnviz.verify.PROVEN_TYPES`, check the capture
            against eager on the prompt first and generate with eager attention if it differs.
        prepared: the prompt as model inputs already (:class:`PreparedPrompt`; ``prompt`` and ``chat`` are then
            not read): a vision-language model's processor output. The run-time check is then the caller's
            (:mod:`attnviz.vlm`).

    Returns:
        :class:`attnviz.types.GenerationAttention`; ``attentions[:, :, i]`` equals
        row ``context_length + i`` of transformers' eager ``output_attentions`` of
        one forward over prompt + generated tokens (within 1e-5 in float32).

    Raises:
        UsageError: empty prompt, bad sampling settings, ``max_new_tokens < 1``,
            prompt + new tokens over the model's maximum positions, ``chat``
            without a chat template. ModelError: model problems.
    """
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    tm = model if isinstance(model, TextModel) else load_generation_model(model, options)
    lm = tm.model
    if not hasattr(lm, "get_output_embeddings") or lm.get_output_embeddings() is None:
        raise ModelError(f"'{tm.source.model_id}' ({tm.model_type}) has no language-model head: it cannot generate")
    tok = tm.tokenizer
    if prepared is None:
        text = _prompt_text(tm, prompt, chat)
        enc = tok(text, add_special_tokens=not chat, return_offsets_mapping=True, verbose=False)
        if not enc["input_ids"]:
            raise UsageError("the prompt produced no tokens")
        info = _token_info(text, enc, tok)
        prompt_ids = list(enc["input_ids"])
    else:
        info, prompt_ids = prepared.tokens, list(prepared.ids)
    encdec = tm.encoder_decoder
    limit = tm.max_positions
    notices: list[str] = []
    keep = limit if encdec else limit - 1  # a decoder needs room for at least one new token
    if prepared is not None and len(prompt_ids) > keep:
        raise UsageError(f"the prompt has {len(prompt_ids)} tokens with its image, more than the model's {limit} "
                         "positions allow (a smaller photo gives fewer image tokens)")
    if len(prompt_ids) > keep:
        notices.append(f"the prompt has {len(prompt_ids)} tokens, more than the model's {limit} positions allow; "
                       f"kept its first {keep}")
        prompt_ids = prompt_ids[:keep]
        info = TokenInfo(info.text, info.tokens[:keep], info.word_ids[:keep], info.offsets[:keep], info.special[:keep])
    room = (limit - 1) if encdec else limit - len(prompt_ids)
    if max_new_tokens > room:
        notices.append(f"--max-new-tokens {max_new_tokens}: the model's {limit} positions leave room for {room} new tokens; "
                       f"generating at most {room}")
        max_new_tokens = room
    device = next(lm.parameters()).device
    chooser = _Chooser(sample, temperature, top_p, seed, device)
    eos = _eos_ids(tm) if stop_at_eos else set()
    ids = torch.tensor([prompt_ids], device=device)

    first: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": True}
    if prepared is not None:
        first.update({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in prepared.extra.items()})
    if encdec:
        start = lm.config.decoder_start_token_id
        if start is None:
            start = tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id
        if start is None:
            raise ModelError(f"'{tm.source.model_id}' has no decoder start token")
        context_ids = [int(start)]
        first["decoder_input_ids"] = torch.tensor([context_ids], device=device)
        context = (token_label(tok, start),)
        context_special = (True,)
    else:
        context_ids = prompt_ids
        context = info.tokens
        context_special = info.special
    if _accepts(lm, "logits_to_keep"):
        first["logits_to_keep"] = 1  # as model.generate() does: no [P, vocab] logits
    if not encdec:
        # A plain DynamicCache keeps every layer's keys (sliding-window layers too; their mask cuts the window),
        # so every layer's row of a step covers the same key positions.
        from transformers import DynamicCache

        first["past_key_values"] = DynamicCache()

    # an architecture the tests do not prove exact is checked against eager on the prompt first (attnviz.verify)
    from attnviz.verify import verify_model

    probe = {k: v for k, v in first.items() if k in ("input_ids", "attention_mask", "decoder_input_ids")}
    verdict = verify_model(lm, tm.model_type, probe, verify and prepared is None)
    backend = "eager" if verdict.use_eager else "auto"
    # prefill: the prompt (or the decoder start token), no attention kept
    if prepared is not None:  # the run-time check is the caller's, so the backend is "auto"
        # a vision-language model's prefill also runs its vision tower (a batch of tiles, attention the answer's
        # rows never read): the model's own attention fills the KV cache; the steps below capture the rows
        with torch.inference_mode():
            out = lm(**first)
        backends = {"sdpa+attnviz"}
    else:
        cap = capture(lm, first, CapturePlan(), backend=backend)
        backends = {cap.backend}
        if cap.notice:
            notices.append(cap.notice)
        out = cap.outputs
    if verdict.notice:
        notices.append(verdict.notice)
    past = out.past_key_values
    encoder_outputs = None
    if encdec:
        from transformers.modeling_outputs import BaseModelOutput

        encoder_outputs = BaseModelOutput(last_hidden_state=out.encoder_last_hidden_state)
    logits = out.logits[0, -1]
    ctx = len(context_ids)
    self_kind = DECODER if encdec else SELF
    generated: list[int] = []
    probs: list[float] = []
    attn = cross = None
    sequence = list(context_ids)
    kv_heads = None
    stopped = False
    for step in range(max_new_tokens):
        token = chooser(logits, torch.tensor([sequence], device=device))
        probs.append(float(torch.softmax(logits.float(), dim=-1)[token]))
        generated.append(token)
        sequence.append(token)
        new = torch.tensor([[token]], device=device)
        inputs: dict[str, Any] = {"past_key_values": past, "use_cache": True}
        if encdec:
            inputs.update(decoder_input_ids=new, encoder_outputs=encoder_outputs, attention_mask=first["attention_mask"])
        else:
            inputs["input_ids"] = new
        if "logits_to_keep" in first:
            inputs["logits_to_keep"] = 1
        cap = capture(lm, inputs, STEP_PLAN, backend=backend)
        backends.add(cap.backend)
        if cap.notice and cap.notice not in notices:
            notices.append(cap.notice)
        maps = cap.attention.get(self_kind)
        if maps is None or maps.rows is None:
            raise ModelError(f"'{tm.source.model_id}' produced no {self_kind} attention while generating")
        end = ctx + step + 1  # keys of this step: absolute positions [end - nk, end) (a sliding-window cache keeps the last ones)
        if attn is None:
            attn = _lazy_zeros((maps.num_layers, maps.num_heads, max_new_tokens, ctx + max_new_tokens))
            kv_heads = maps.kv_heads
        row = maps.rows[:, :, -1, :]  # [L, H, nk]
        if row.shape[-1] > end or maps.num_layers != attn.shape[0]:
            # more keys than prompt + generated tokens (a model that inserts tokens of its own, a cache filled
            # twice), or another set of layers: the row is not this sequence's [query, key] map
            raise ModelError(f"'{tm.source.model_id}': step {step} attends over {row.shape[-1]} keys in {maps.num_layers} "
                             f"layers, but its sequence holds {end} tokens and the model {attn.shape[0]} layers; refusing "
                             "rather than drawing rows that do not line up with the tokens")
        attn[:, :, step, end - row.shape[-1] : end] = row
        if encdec:
            cmaps = cap.attention.get(CROSS)
            if cmaps is not None and cmaps.rows is not None:
                if cross is None:
                    cross = _lazy_zeros((cmaps.num_layers, cmaps.num_heads, max_new_tokens, cmaps.num_keys))
                cross[:, :, step] = cmaps.rows[:, :, -1, :]
        out = cap.outputs
        past = out.past_key_values
        logits = out.logits[0, -1]
        if progress is not None:
            progress(step + 1, max_new_tokens)
        if token in eos:
            stopped = True
            break
    n = len(generated)
    if n < max_new_tokens:  # stopped at EOS: drop the unused steps and keys
        attn = attn[:, :, :n, : ctx + n].clone()
        cross = cross[:, :, :n].clone() if cross is not None else None
    labels = tuple(token_label(tok, t) for t in generated)
    special_ids = set(tok.all_special_ids)
    return GenerationAttention(
        model_id=tm.source.model_id,
        model_type=tm.model_type,
        backend="eager" if "eager" in backends else "sdpa+attnviz",
        prompt=info,
        prompt_ids=tuple(prompt_ids),
        generated_ids=tuple(generated),
        generated=labels,
        generated_special=tuple(t in special_ids for t in generated),
        context=tuple(context),
        context_special=tuple(context_special),
        attentions=attn,
        probabilities=tuple(probs),
        text=tok.decode(generated, skip_special_tokens=True),
        cross_attentions=cross,
        encoder_decoder=encdec,
        stopped_at_eos=stopped,
        sampling={"do_sample": sample, "temperature": temperature, "top_p": top_p, "seed": seed if sample else None},
        kv_heads=kv_heads,
        notice="; ".join(notices) if notices else None,
    )


def full_sequence(result: GenerationAttention) -> Sequence[int]:
    """Prompt + generated token ids (the ``input_ids`` metadata of ``--save-attn``)."""
    return list(result.prompt_ids) + list(result.generated_ids)


def as_text_attention(result: GenerationAttention):
    """The generated tokens' rows as a :class:`attnviz.types.TextAttention`, to feed the text analyses and views.

    Decoder-only: one sequence (prompt + generated tokens) whose ``"self"``
    attention holds the rows of the generated positions (``rows``/``row_index``).
    Encoder-decoder: source ``tokens`` and target tokens (decoder start +
    generated), with ``"decoder"`` and ``"cross"`` rows. Used for the focus view
    of a generated token (:func:`attnviz.analysis.focus.analyse_focus`,
    :func:`attnviz.render.text.focus_view`).
    """
    from attnviz.types import AttentionMaps, TextAttention, TokenInfo

    T, C = result.num_generated, result.context_length
    rows = tuple(range(C, C + T))
    L, H = result.num_layers, result.num_heads
    gen_info = lambda pre_tokens, pre_special, text: TokenInfo(  # noqa: E731
        text, tuple(pre_tokens) + result.generated, (None,) * (len(pre_tokens) + T), ((0, 0),) * (len(pre_tokens) + T),
        tuple(pre_special) + result.generated_special,
    )
    if not result.encoder_decoder:
        p = result.prompt
        info = TokenInfo(
            p.text + result.text, p.tokens + result.generated, p.word_ids + (None,) * T, p.offsets + ((0, 0),) * T,
            p.special + result.generated_special,
        )
        maps = AttentionMaps(SELF, L, H, C + T, C + T, causal=True, rows=result.attentions, row_index=rows, kv_heads=result.kv_heads)
        return TextAttention(result.model_id, result.model_type, result.backend, info, {SELF: maps}, notice=result.notice)
    target = gen_info(result.context, result.context_special, result.text)
    attention = {DECODER: AttentionMaps(DECODER, L, H, C + T, C + T, causal=True, rows=result.attentions, row_index=rows,
                                        kv_heads=result.kv_heads)}
    if result.cross_attentions is not None:
        cl, ch = result.cross_attentions.shape[:2]
        attention[CROSS] = AttentionMaps(CROSS, cl, ch, C + T, result.prompt_length, rows=result.cross_attentions, row_index=rows)
    return TextAttention(result.model_id, result.model_type, result.backend, result.prompt, attention, target_tokens=target,
                         notice=result.notice)


def find_step(result: GenerationAttention, token: str, index: int | None = None) -> int:
    """The generated token (0-based step) whose label is ``token`` (case-insensitive), the ``index``-th of several.

    Raises:
        UsageError: not generated, ambiguous without ``index``, or ``index`` out of
            range; the message lists the generated tokens.
    """
    want = token.strip().lower()
    if not want:
        raise UsageError("--token is empty")
    hits = [i for i, lab in enumerate(result.generated) if lab.strip().lower() == want]
    listing = " ".join(f"{i}:{lab}" for i, lab in enumerate(result.generated))
    if len(listing) > 600:
        listing = listing[:600] + " ..."
    if not hits:
        raise UsageError(f"'{token}' was not generated; the generated tokens are: {listing}")
    if index is None:
        if len(hits) > 1:
            raise UsageError(f"'{token}' was generated {len(hits)} times (steps {', '.join(map(str, hits[:10]))}); "
                             f"pick one with --token-index 0..{len(hits) - 1}")
        index = 0
    if not 0 <= index < len(hits):
        raise UsageError(f"--token-index {index} is out of range: '{token}' was generated {len(hits)} times (0..{len(hits) - 1})")
    return hits[index]


def analyse_step_focus(result: GenerationAttention, step: int, top: int = 10):
    """:func:`attnviz.analysis.focus.analyse_focus` for generated token ``step`` (cross-attention for encoder-decoder
    models): each head's strongest earlier, non-special, non-adjacent token. Returns ``(TextAttention, Focus)``."""
    from attnviz.analysis.select import ViewSpec, units_for
    from attnviz.analysis.focus import analyse_focus, focus_kind

    step = result.check_step(step)
    text = as_text_attention(result)
    kind = focus_kind(text) if result.encoder_decoder else SELF
    _, query_info, _ = text.sides(kind)
    spec = ViewSpec()
    position = result.context_length + step
    labels = units_for(query_info, spec).labels
    want = labels[position].strip().lower()
    if not want:
        raise UsageError(f"generated token {step} has an empty label; pick another")
    hits = [i for i, lab in enumerate(labels) if lab.lower().removeprefix("##") == want.removeprefix("##")]
    return text, analyse_focus(text, labels[position], hits.index(position), spec, top=top, kind=kind)
