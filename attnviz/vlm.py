"""Vision-language models while they answer (``attnviz generate --image``): load a VLM and its processor, build the
prompt with the photo, and capture every generated token's attention row over the image tokens, the prompt and the
tokens before it.

The decoding loop is :func:`attnviz.generate.attend_generation`'s (the model's own KV cache, one exact row per layer
and head per step, never an ``[N, N]`` map); the first forward pass also takes the processor's pixel inputs. Each
image token of the prompt is tied to its pixel rectangle in the photo by :mod:`attnviz.inputs.vlm`.

Supported model types: :data:`VLM_TYPES` (tests/test_vlm.py proves each one's rows equal eager ``output_attentions``
and its greedy ids equal ``model.generate``); others are refused in one line.

Public entry points: :func:`load_vlm`, :func:`prepare_vlm_prompt`, :func:`attend_vlm_generation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from attnviz.errors import InputError, ModelError, UsageError
from attnviz.models import LoadOptions, ModelSource, load_config, load_model_for_capture, resolve_model
from attnviz.types import GenerationAttention, TokenInfo

#: ``config.model_type`` of the vision-language models attnviz generates with (tests/test_vlm.py proves each).
VLM_TYPES: dict[str, str] = {
    "llava": "LLaVA-1.5", "llava_next": "LLaVA-NeXT", "llava_onevision": "LLaVA-OneVision", "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL", "idefics3": "Idefics3", "smolvlm": "SmolVLM",
    "paligemma": "PaliGemma", "gemma3": "Gemma-3",
}

#: Label of an image token in token lists and figures.
IMAGE_TOKEN_LABEL = "<image>"


def is_vlm_config(config) -> bool:
    """True if ``config`` is a vision-language model's (a vision config beside a text config)."""
    return getattr(config, "vision_config", None) is not None and getattr(config, "text_config", None) is not None


def check_vlm(config, name: str) -> None:
    """Refuse, in one line, a model ``attnviz generate --image`` does not cover.

    Raises:
        ModelError: a text-only model, or a vision-language model type outside :data:`VLM_TYPES`.
    """
    model_type = getattr(config, "model_type", "")
    if model_type in VLM_TYPES:
        return
    covered = ", ".join(VLM_TYPES.values())
    if is_vlm_config(config):
        raise ModelError(f"'{name}' is a {model_type} vision-language model: attnviz generate --image covers {covered} "
                         "(each proven exact against eager attention); this one is not proven yet")
    raise ModelError(f"'{name}' ({model_type or 'unknown type'}) is not a vision-language model: --image needs one of "
                     f"{covered}")


@dataclass(frozen=True)
class VisionLanguageModel:
    """A loaded VLM: ``model`` (``AutoModelForImageTextToText``), its ``processor`` and, as
    :class:`attnviz.inputs.tokens.TextModel`, the view of it the decoding loop uses (``text.tokenizer`` is the
    processor's tokenizer)."""

    source: ModelSource
    model: Any
    processor: Any
    text: Any  # attnviz.inputs.tokens.TextModel

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    @property
    def image_token_id(self) -> int:
        return image_token_id(self.model.config)


def image_token_id(config) -> int:
    """The id of the image placeholder token the processor repeats once per image token.

    Raises:
        ModelError: the config names none.
    """
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ModelError(f"the {getattr(config, 'model_type', '?')} config names no image token id")


def load_vlm(name: str, options: LoadOptions = LoadOptions()) -> VisionLanguageModel:
    """Load a vision-language model (``AutoModelForImageTextToText``) with its processor.

    Raises:
        ModelError: not found, not a supported VLM (:func:`check_vlm`), no processor, or weights missing.
    """
    from transformers import AutoModelForImageTextToText

    from attnviz.inputs.tokens import TextModel, _max_positions

    source = resolve_model(name)
    config = load_config(source, options)
    check_vlm(config, name)
    try:
        processor = load_processor(source, config, options)
    except (OSError, ValueError, TypeError, KeyError, ImportError) as exc:
        raise ModelError(f"cannot load the processor of '{name}': {str(exc).strip().splitlines()[0][:200]}") from exc
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not hasattr(processor, "image_processor"):
        raise ModelError(f"'{name}': its processor has no tokenizer and image processor")
    model = load_model_for_capture(source, AutoModelForImageTextToText, options)
    text = TextModel(source, model, tokenizer, _max_positions(model.config, tokenizer))
    return VisionLanguageModel(source, model, processor, text)


class NoVideoProcessor(dict):
    """Stands in the ``video_processor`` slot of an image-and-video processor (Qwen2-VL, LLaVA-OneVision, SmolVLM)
    where transformers cannot build the video processor (it needs torchvision): attnviz sends photos only. Holds the
    ``num_frames``/``fps`` SmolVLM's chat template reads (its own defaults, 64 frames at 1 fps); an empty dict, so
    that transformers can serialise the processor."""

    num_frames = 64
    fps = 1

    def __call__(self, *args, **kwargs):  # pragma: no cover - never called for photos
        raise InputError("this processor was loaded without its video processor (no torchvision): photos only")

    def __repr__(self) -> str:
        return "NoVideoProcessor()"


def load_processor(source: ModelSource, config, options: LoadOptions = LoadOptions()):
    """The model's processor (``AutoProcessor``). Where transformers cannot build its video processor for want of
    torchvision, the same processor class is built from the same files with :class:`NoVideoProcessor` in that slot
    (images and text are processed exactly as with it).

    Raises:
        OSError, ValueError, ImportError...: as ``from_pretrained`` (the caller turns them into one line).
    """
    from transformers import AutoProcessor

    kwargs = {"trust_remote_code": options.trust_remote_code}
    try:
        return AutoProcessor.from_pretrained(source.location, **kwargs)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    cls = PROCESSOR_MAPPING[type(config)]
    original = cls.check_argument_for_proper_class

    def check(self, name, arg):
        return None if isinstance(arg, NoVideoProcessor) else original(self, name, arg)

    cls.check_argument_for_proper_class = check
    try:
        return cls.from_pretrained(source.location, video_processor=NoVideoProcessor(), **kwargs)
    finally:
        cls.check_argument_for_proper_class = original


@dataclass(frozen=True)
class VLMPrompt:
    """A prompt with its photo as model inputs.

    ``inputs``: the processor's output (batch of one; ``input_ids`` int64 ``[1, P]``, pixel inputs);
    ``tokens``: the prompt's :class:`TokenInfo` (image tokens labelled :data:`IMAGE_TOKEN_LABEL`, special);
    ``image_positions``: the positions of the image tokens in ``input_ids``, in order (0-based);
    ``layout``: :class:`attnviz.inputs.vlm.ImageTokenLayout`, image token ``t``'s pixel box is
    ``layout.token_boxes()[t]``; ``photo``: the RGB photo (PIL); ``text``: the prompt string given to the processor.
    """

    inputs: Mapping[str, torch.Tensor]
    tokens: TokenInfo
    image_positions: tuple[int, ...]
    layout: Any
    photo: Any
    text: str


def _placeholder(vm: VisionLanguageModel) -> str:
    """The text that stands for the photo in a prompt without chat template (the processor expands it)."""
    proc = vm.processor
    token = getattr(proc, "image_token", None) or "<image>"
    if vm.model_type in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        start = getattr(proc, "vision_start_token", None) or "<|vision_start|>"
        end = getattr(proc, "vision_end_token", None) or "<|vision_end|>"
        return f"{start}{token}{end}"
    return token + ("\n" if vm.model_type.startswith("llava") else "")


def prompt_text(vm: VisionLanguageModel, prompt: str, chat: bool) -> str:
    """The string handed to the processor: with ``chat``, one user turn holding the photo then the prompt, through
    the processor's chat template (generation prompt added); without, the photo's placeholder then the prompt
    (unless the prompt already holds the placeholder).

    Raises:
        UsageError: empty prompt; ``chat`` without a chat template.
    """
    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty" if not prompt else "the prompt is only whitespace")
    if chat:
        template = getattr(vm.processor, "chat_template", None) or getattr(vm.text.tokenizer, "chat_template", None)
        if not template:
            raise UsageError(f"--chat: the processor of '{vm.source.model_id}' has no chat template")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        # the processor's template, else the tokenizer's (a processor without one of its own refuses otherwise)
        kwargs = {} if getattr(vm.processor, "chat_template", None) else {"chat_template": template}
        try:
            return vm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
        except ValueError as exc:
            raise UsageError(f"--chat: the chat template of '{vm.source.model_id}' cannot be applied: "
                             f"{str(exc).strip().splitlines()[0][:200]}") from exc
    token = getattr(vm.processor, "image_token", None) or "<image>"
    return prompt if token in prompt else _placeholder(vm) + prompt


def prepare_vlm_prompt(vm: VisionLanguageModel, prompt: str, photo, chat: bool = False) -> VLMPrompt:
    """Run the processor on ``prompt`` and ``photo`` (a PIL image or a path: read as ``attnviz image`` reads it, RGB
    with its EXIF orientation) and tie each image token to its pixel box (:func:`attnviz.inputs.vlm.image_token_layout`).

    Raises:
        UsageError: empty prompt, ``chat`` without template. InputError: an unreadable photo; the processor rejects
            it (a prompt with two image placeholders, for one). ModelError: no image token in the prompt; a photo
            attnviz cannot place (a LLaVA-NeXT photo too thin for its tiles); a layout that does not hold exactly
            as many tokens as the processor put in the prompt (the figure would be wrong, so nothing is shown).
    """
    from attnviz.inputs.imagefile import load_image
    from attnviz.inputs.vlm import image_token_layout

    photo = load_image(photo)  # RGB, EXIF orientation applied, transparency over white (as attnviz image)
    text = prompt_text(vm, prompt, chat)
    bos = getattr(vm.text.tokenizer, "bos_token", None)
    # a chat template that writes the BOS itself: the tokenizer must not add a second (as apply_chat_template does)
    kwargs = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
    try:
        enc = vm.processor(images=[photo], text=[text], return_tensors="pt", **kwargs)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"the processor of '{vm.source.model_id}' rejected the photo: "
                         f"{str(exc).strip().splitlines()[0][:200]}") from exc
    ids = enc["input_ids"][0]
    token_id = vm.image_token_id
    positions = tuple(int(i) for i in torch.nonzero(ids == token_id).flatten())
    if not positions:
        raise ModelError(f"the processor of '{vm.source.model_id}' put no image token into the prompt")
    try:
        layout = image_token_layout(vm.model_type, vm.model.config, vm.processor, photo.size, enc)
    except (ValueError, ZeroDivisionError, IndexError) as exc:
        raise ModelError(f"cannot place the image tokens of '{vm.source.model_id}' on the photo: {exc}") from exc
    if layout.num_tokens != len(positions):
        raise ModelError(f"'{vm.source.model_id}': the processor put {len(positions)} image tokens into the prompt, but "
                         f"attnviz's layout of this photo holds {layout.num_tokens}; refusing rather than drawing a wrong map")
    tok = vm.text.tokenizer
    image = set(positions)
    special_ids = set(tok.all_special_ids) | {token_id}
    labels, special = [], []
    for i, t in enumerate(ids.tolist()):
        if i in image:
            labels.append(IMAGE_TOKEN_LABEL)
        else:
            from attnviz.generate import token_label

            labels.append(token_label(tok, t))
        special.append(i in image or t in special_ids)
    n = len(labels)
    info = TokenInfo(text, tuple(labels), (None,) * n, ((0, 0),) * n, tuple(special))
    dtype = next(vm.model.parameters()).dtype
    inputs = {k: (v.to(dtype) if torch.is_floating_point(v) else v) for k, v in enc.items()
              if isinstance(v, torch.Tensor) and k != "labels"}  # PaliGemma's processor may return labels
    return VLMPrompt(inputs, info, positions, layout, photo, text)


@dataclass(frozen=True)
class VLMGeneration:
    """What a VLM generated and where each generated token attended.

    ``generation``: :class:`attnviz.types.GenerationAttention` (``attentions`` float32
    ``[layers, heads, generated, keys]``, keys = prompt with its image tokens expanded, then generated tokens);
    ``image_positions``: key positions of the image tokens, in the order of ``layout``'s tokens;
    ``layout``: :class:`attnviz.inputs.vlm.ImageTokenLayout`; ``photo``: the RGB photo (PIL);
    ``photo_name``: the file it came from (for titles), or None.
    """

    generation: GenerationAttention
    image_positions: tuple[int, ...]
    layout: Any
    photo: Any
    photo_name: str | None = None

    @property
    def num_image_tokens(self) -> int:
        return len(self.image_positions)


def attend_vlm_generation(
    prompt: str,
    photo,
    model: VisionLanguageModel | str,
    *,
    chat: bool = False,
    photo_name: str | None = None,
    options: LoadOptions = LoadOptions(),
    progress: Callable[[int, int], None] | None = None,
    verify: bool = True,
    **generation: Any,
) -> VLMGeneration:
    """Answer ``prompt`` about ``photo`` and capture every generated token's attention row.

    Same decoding and capture as :func:`attnviz.generate.attend_generation` (``max_new_tokens``, ``sample``,
    ``temperature``, ``top_p``, ``seed``, ``stop_at_eos`` pass through): greedy ids equal ``model.generate`` with the
    same inputs, and ``generation.attentions[:, :, i]`` equals row ``P + i`` of eager ``output_attentions`` of one
    forward over the prompt (with the same pixel inputs) and the generated ids (1e-5 in float32). With ``verify``, a
    language model type outside :data:`attnviz.verify.PROVEN_TYPES` is first checked against eager on a text probe.

    Raises:
        UsageError, InputError, ModelError: as :func:`prepare_vlm_prompt` and ``attend_generation``.
    """
    from attnviz.generate import PreparedPrompt, attend_generation

    vm = model if isinstance(model, VisionLanguageModel) else load_vlm(model, options)
    prepared = prepare_vlm_prompt(vm, prompt, photo, chat)
    notice = _verify_language_model(vm, verify)
    extra = {k: v for k, v in prepared.inputs.items() if k not in ("input_ids", "attention_mask")}
    result = attend_generation(prompt, vm.text, progress=progress, verify=verify,
                               prepared=PreparedPrompt(tuple(prepared.inputs["input_ids"][0].tolist()), prepared.tokens, extra),
                               **generation)
    if notice:
        from dataclasses import replace

        result = replace(result, notice="; ".join(n for n in (result.notice, notice) if n))
    return VLMGeneration(result, prepared.image_positions, prepared.layout, prepared.photo, photo_name)


def _verify_language_model(vm: VisionLanguageModel, enabled: bool) -> str | None:
    """The run-time check for a VLM whose language model type the tests do not prove: its language model alone,
    on a short text probe, against eager. Returns a notice, or None.

    Raises:
        ModelError: the capture differs from eager (the VLM route has no eager fallback).
    """
    from attnviz.verify import PROVEN_TYPES, verify_model

    text_type = getattr(vm.model.config.get_text_config(), "model_type", "")
    if not enabled or text_type in PROVEN_TYPES or vm.model_type in VLM_PROVEN_TEXT.get(text_type, ()):
        return None
    language_model = vm.model.get_decoder() if hasattr(vm.model, "get_decoder") else None
    if language_model is None:
        return None
    ids = vm.text.tokenizer("A photo of a cup on a wooden table, next to a plate.", return_tensors="pt")["input_ids"]
    ids = ids.to(next(language_model.parameters()).device)
    verdict = verify_model(language_model, text_type, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    if verdict.status == "mismatch":
        raise ModelError(f"'{vm.source.model_id}': {verdict.notice.split(';')[0]}; refusing (no eager fallback for "
                         "vision-language models)")
    return verdict.notice


#: Language model types proven inside a VLM by the tests although not as text models on their own
#: (Qwen2-VL's text model with M-RoPE, Qwen3-VL's with interleaved M-RoPE and deepstack): text type -> VLM types.
VLM_PROVEN_TEXT: dict[str, tuple[str, ...]] = {
    "qwen2_vl_text": ("qwen2_vl",), "qwen2_5_vl_text": ("qwen2_5_vl",), "qwen3_vl_text": ("qwen3_vl",),
    "gemma": ("paligemma",), "gemma3_text": ("gemma3",),
}

#: ``token_type_ids`` of generated tokens in a one-forward reference, as ``model.generate`` treats them: PaliGemma's
#: generated tokens are the causal suffix (1; the prompt, 0, is attended both ways), Gemma-3's are text (0; 1 marks
#: image tokens, attended both ways within one image).
GENERATED_TOKEN_TYPE: dict[str, int] = {"paligemma": 1, "gemma3": 0}


def eager_generation_rows(vm: VisionLanguageModel, prepared: VLMPrompt, generated_ids) -> torch.Tensor:
    """The reference of a VLM run: eager ``output_attentions`` of ONE forward pass over the prompt (with the same
    pixel inputs) and the generated ids, float32 ``[L, H, T, P + T]`` (the generated positions' rows, every key).

    Holds every layer's ``[H, P + T, P + T]`` maps for a moment (that is what ``attnviz check`` and the tests pay;
    the run itself never does). The model's attention implementation is restored afterwards.

    Raises:
        ModelError: the model returns no attention maps with eager attention.
    """
    from attnviz.capture import eager_attention

    model = vm.model
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in prepared.inputs.items()}
    T = len(generated_ids)
    new = torch.tensor([list(generated_ids)], device=device, dtype=inputs["input_ids"].dtype)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], new], 1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL: generated tokens are text (0)
        mm = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([mm, torch.zeros(1, T, dtype=mm.dtype, device=device)], 1)
    if "token_type_ids" in inputs:  # PaliGemma: generated tokens are the causal suffix (1); Gemma-3: text (0)
        tt = inputs["token_type_ids"]
        fill = GENERATED_TOKEN_TYPE.get(model.config.model_type, 0)
        inputs["token_type_ids"] = torch.cat([tt, torch.full((1, T), fill, dtype=tt.dtype, device=device)], 1)
    if hasattr(model, "model") and hasattr(model.model, "rope_deltas"):
        model.model.rope_deltas = None  # computed afresh from the whole sequence
    with eager_attention(model), torch.inference_mode():
        out = model(**inputs, output_attentions=True, use_cache=False)
    maps = getattr(out, "attentions", None)
    if not maps:
        raise ModelError(f"'{vm.source.model_id}' returns no attention maps with eager attention")
    P = prepared.inputs["input_ids"].shape[1]
    return torch.stack([a[0, :, P:P + T, :P + T].float().cpu() for a in maps])
