"""Tiny random-weight vision-language models (model + processor) saved with save_pretrained into tmp dirs.

``make_vlm(root, kind)`` builds one and returns its folder, which loads offline with ``AutoProcessor`` (or
:func:`load_processor` where torchvision is missing, see below) and ``AutoModelForImageTextToText`` and takes the
usual chat-template flow::

    proc = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is on the table?"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    inputs = proc(images=photo, text=text, return_tensors="pt")
    model.generate(**inputs, max_new_tokens=5, do_sample=False)

Every family is configured like its real checkpoints, scaled down (2 vision layers, 2 LM layers, hidden 32-64,
tiles of 32-56 px); the processor's image-token count matches what the model expects.

===============  ================================  ======================================  =========================
kind             model                             vision side                             image tokens, square photo
===============  ================================  ======================================  =========================
llava            LLaVA-1.5: CLIP + Llama           56 px centre crop, patch 14, [CLS] out  16
llava_next       LLaVA-NeXT: CLIP + Mistral        anyres, 28 px tiles of 2x2 patches      4 + 4x4 + 4 newlines = 24
llava_onevision  OneVision: SigLIP + Qwen2         anyres, 42 px tiles of 3x3 patches,     9 + 6x6 + 6 newlines = 51
                                                   anyres_max_4 (9x9 pooled to 6x6)
qwen2_vl         Qwen2-VL: M-RoPE                  patch 14, merge 2x2, 4..16 tokens       9 (96 px), 16 (>= 112 px)
qwen2_5_vl       Qwen2.5-VL: window attention      patch 14, merge 2x2, 4..16 tokens       9 (96 px), 16 (>= 112 px)
qwen3_vl         Qwen3-VL: interleaved M-RoPE,     patch 16, merge 2x2, 4..16 tokens,      9 (96 px), 16 (>= 128 px)
                 deepstack (vision layer 0 into    learned 8x8 position grid resampled
                 LM layer 0's output)
idefics3         Idefics3: SigLIP + Llama          split into 56 px tiles (<= 3x3) + the   3x3 tiles + global, 4 each
                                                   global one, patch 14, pixel shuffle 2   = 40
smolvlm          SmolVLM: SigLIP + SmolLM (Llama)  as Idefics3, 32 px tiles, patch 8       40
paligemma        PaliGemma: SigLIP + Gemma         56 px squashed, patch 14; prefix-LM     16
                                                   (token_type_ids 0: the prompt, both ways)
gemma3           Gemma-3: SigLIP + Gemma-3         64 px squashed, patch 8, 8x8 patches    16
                 (sliding window 16 in layer 0)    avg-pooled 2x2 into 4x4 tokens; an
                                                   image's tokens attend each other
===============  ================================  ======================================  =========================

PaliGemma has no chat template (like the real checkpoints): its processor makes ``<image>`` x 16, ``<bos>``, the
prompt and ``\n`` of a plain prompt (``"<image>What is on the table?"``), token_type_ids 0 (the prefix) and
``labels`` (all -100; a forward must not get them with fewer logits than ids). Gemma-3's processor expands
``<start_of_image>`` into ``\n\n<start_of_image>``, 16 ``<image_soft_token>``, ``<end_of_image>\n\n`` (token_type_ids
1 on the soft tokens; ``config.image_token_id`` is the soft token, ``processor.image_token_id`` is
``<start_of_image>``), and its tokenizer prepends ``<bos>`` like Gemma's, so a chat-template text that begins with
``<bos>`` goes through the processor with ``add_special_tokens=False`` (as ``processor.apply_chat_template(...,
tokenize=True)`` does), or it gets two.

Language models: 2 layers, hidden 64, 4 heads of 16 (2 KV heads), max_position_embeddings 2048; vision towers:
2 layers, hidden 32, 4 heads. The tokenizer is :func:`tiny.bpe_tokenizer` (its tiny corpus gives ~370 tokens)
plus each family's special tokens. The EOS tokens' output rows are zero, so greedy decoding never picks EOS (random
logits are nearly flat, |logit| < 1, and EOS would otherwise come now and then).

Without torchvision (this project's test environment), ``AutoProcessor.from_pretrained`` cannot load any processor
that holds a video processor -- Qwen2-VL, Qwen2.5-VL, OneVision, SmolVLM, the real checkpoints as well as these: it
raises ImportError (Qwen3-VL's too). :func:`load_processor` then builds the same processor without one. SmolVLM's processor also
needs the ``num2words`` package (:data:`REQUIRES`), to build as well as to load.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tiny import bpe_tokenizer

#: the Gemma-based families (token_type_ids: PaliGemma's two-way prefix, Gemma-3's two-way images)
GEMMA_KINDS = ("paligemma", "gemma3")
#: the families :func:`make_vlm` builds (and attnviz generate --image proves, tests/test_vlm.py)
VLM_KINDS = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3",
             "smolvlm") + GEMMA_KINDS
#: kinds without a chat template (like the real checkpoints): a plain prompt
NO_CHAT = ("paligemma",)
#: the token_type_ids value of a generated token, in one forward over prompt + generated ids that gives what
#: ``model.generate`` computes: PaliGemma 1 (the causal suffix; 0 is the prefix, the prompt, attended both ways),
#: Gemma-3 0 (text; 1 marks image tokens, attended both ways within one image)
GENERATED_TOKEN_TYPE = {"paligemma": 1, "gemma3": 0}

#: packages a kind's processor needs beyond this project's dependencies
REQUIRES = {"smolvlm": ("num2words",)}

#: the question of the docstring's example, and the user message with one image before it
QUESTION = "What is on the table?"
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]

# -- chat templates, after the real checkpoints' ------------------------------------------------------------------

#: llava-hf/llava-1.5-7b-hf: "USER: <image>\nWhat is on the table? ASSISTANT:"
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: llava-hf/llava-v1.6-mistral-7b-hf: "[INST] <image>\nWhat is on the table? [/INST]"
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }}{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ ' [/INST]' }}{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

#: llava-hf/llava-onevision-qwen2-0.5b-ov-hf: "<|im_start|>user <image>\nWhat is on the table?<|im_end|>
#: <|im_start|>assistant\n"
ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + c['text'] }}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Qwen/Qwen3-VL-2B-Instruct (no default system prompt; its thinking/tool branches left out):
#: "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is on the table?<|im_end|>\n<|im_start|>assistant\n"
QWEN3_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' or 'image' in c %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Qwen/Qwen2-VL-2B-Instruct (also Qwen2.5-VL): Qwen3-VL's, after a default system prompt:
#: "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>..."
QWEN_VL_TEMPLATE = QWEN3_VL_TEMPLATE.replace(
    "{% for message in messages %}",
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}", 1)

#: HuggingFaceM4/Idefics3-8B-Llama3: "<s>User:<image>What is on the table?<end_of_utterance>\nAssistant:"
IDEFICS3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}{% elif c['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<end_of_utterance>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: HuggingFaceTB/SmolVLM-256M-Instruct: "<|im_start|>User:<image>What is on the table?<end_of_utterance>\nAssistant:"
SMOLVLM_TEMPLATE = "<|im_start|>" + IDEFICS3_TEMPLATE.removeprefix("{{ bos_token }}")

#: google/gemma-3-4b-it (no system message): "<bos><start_of_turn>user\n<start_of_image>What is on the table?<end_of_turn>
#: \n<start_of_turn>model\n" (the processor expands <start_of_image> into "\n\n<start_of_image>", the image tokens,
#: "<end_of_image>\n\n")
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% if messages[0]['content'] is string %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}"
    "{% else %}{% set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' %}{% endif %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# -- tokenizers ----------------------------------------------------------------------------------------------------


def _tokenizer(specials: list[str], bos: bool = False):
    """The tiny byte-level BPE of :mod:`tiny` (~370 tokens from its tiny corpus, <|endoftext|> <s> </s> <pad> among
    them) with ``specials`` added as special tokens (never split, never merged with their neighbours); ``bos`` prepends <s> to every encoding."""
    from tokenizers import processors

    tok = bpe_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": specials})
    if bos:
        backend = tok.backend_tokenizer
        backend.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))],
            ),
        ])
    return tok


def _ids(tok, *tokens: str) -> list[int]:
    ids = tok.convert_tokens_to_ids(list(tokens))
    assert tok.convert_ids_to_tokens(ids) == list(tokens), tokens
    return ids


#: Gemma-3's image tokens (the tokenizer's extra special tokens, as in google/gemma-3-4b-it's tokenizer_config.json)
GEMMA3_IMAGE_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                       "image_token": "<image_soft_token>"}
#: the tiny Gemma-3's sliding window (layer 0), shorter than the chat prompt with its 16 image tokens
GEMMA3_WINDOW = 16


def _gemma_tokenizer(specials: list[str], extra: dict[str, str] | None = None):
    """The tiny BPE with Gemma's special tokens: <bos> (prepended to every encoding, ``add_bos_token``, like
    Gemma's tokenizer), <eos>, <pad> (the tiny BPE's), ``specials``, and ``extra`` named special tokens
    (``tok.boi_token``, ``tok.boi_token_id``...)."""
    from transformers import PreTrainedTokenizerFast

    base = _tokenizer(["<bos>", "<eos>", *specials])
    return PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<|endoftext|>", extra_special_tokens=extra or {},
                                   add_bos_token=True, add_eos_token=False)


# -- configs -------------------------------------------------------------------------------------------------------

#: the language model's shape: 2 layers, hidden 64, 4 heads of 16, 2 KV heads
LM = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=2048)
#: the vision tower's shape: 2 layers, hidden 32, 4 heads of 8
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
#: tiny vocabularies rounded up to a multiple of 64 (like the real ones), leaving unused rows
_ROUND = 64


def _vocab(tok) -> int:
    return -(-len(tok) // _ROUND) * _ROUND


class NoVideoProcessor:
    """Stands in for the video processor where torchvision is missing: processes no video, but answers
    ``num_frames`` / ``fps``, which SmolVLM's ``apply_chat_template`` reads even for an image-only chat (SmolVLM's
    real ``video_sampling``: 64 frames, 1 fps)."""

    num_frames = 64
    fps = 1

    def __repr__(self) -> str:
        return "NoVideoProcessor()"


def _processor(cls, video_processor=None, **kwargs):
    """``cls(**kwargs)``, a processor that has a ``video_processor`` slot (Qwen2-VL, OneVision, SmolVLM).

    Without torchvision transformers can build no video processor, and ``ProcessorMixin.__init__`` refuses to go
    without one (its class check looks ``VideoProcessorMixin`` up in a mapping that is a dummy then); so then a
    :class:`NoVideoProcessor` takes the slot, past that check. Images and text go through such a processor as usual."""
    if video_processor is not None:
        return cls(video_processor=video_processor, **kwargs)
    processor = cls.__new__(cls)
    check = processor.check_argument_for_proper_class
    processor.check_argument_for_proper_class = (
        lambda name, arg: None if isinstance(arg, NoVideoProcessor) else check(name, arg)
    )
    try:
        cls.__init__(processor, video_processor=NoVideoProcessor(), **kwargs)
    finally:
        del processor.check_argument_for_proper_class
    return processor


def load_processor(path):
    """``AutoProcessor.from_pretrained(path)``; where that fails for want of torchvision (Qwen2-VL, Qwen2.5-VL,
    OneVision and SmolVLM processors hold a video processor, which needs torchvision), the same processor built from
    the folder's tokenizer, image processor (PIL backend), processor_config.json and chat template, without a video
    processor."""
    import json

    import transformers as tf

    try:
        return tf.AutoProcessor.from_pretrained(path)
    except ImportError as err:
        if "torchvision" not in str(err).lower():
            raise
    path = Path(path)
    extra = json.loads((path / "processor_config.json").read_text())
    cls = getattr(tf, extra.pop("processor_class"))
    image_processor = tf.AutoImageProcessor.from_pretrained(path, processor_config=extra.pop("image_processor"))
    extra.pop("video_processor", None)
    template = path / "chat_template.jinja"
    return _processor(
        cls, image_processor=image_processor, tokenizer=tf.AutoTokenizer.from_pretrained(path),
        chat_template=template.read_text() if template.exists() else None, **extra,
    )


#: the video processor entries of processor_config.json (scaled like the image processors), written by hand where
#: torchvision is missing; with torchvision AutoProcessor builds the video processor from them, without it
#: AutoProcessor raises ImportError just as it does for the real checkpoints
VIDEO_PROCESSORS = {
    "llava_onevision": {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 42, "width": 42}},
    "qwen2_vl": {"video_processor_type": "Qwen2VLVideoProcessor", "patch_size": 14, "merge_size": 2,
                 "temporal_patch_size": 2, "size": {"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}},
    "smolvlm": {"video_processor_type": "SmolVLMVideoProcessor", "size": {"longest_edge": 32},
                "max_image_size": {"longest_edge": 32}},
}
VIDEO_PROCESSORS["qwen2_5_vl"] = VIDEO_PROCESSORS["qwen2_vl"]
VIDEO_PROCESSORS["qwen3_vl"] = {"video_processor_type": "Qwen3VLVideoProcessor", "patch_size": 16, "merge_size": 2,
                                "temporal_patch_size": 2, "size": {"shortest_edge": 32 * 32 * 8,
                                                                   "longest_edge": 32 * 32 * 16 * 2}}


def _save_processor(processor, path: Path, kind: str) -> None:
    """``processor.save_pretrained(path)``, which fails on a processor with a :class:`NoVideoProcessor` (see
    :func:`_processor`): then the same files by hand (tokenizer files, processor_config.json with the image processor
    nested in it and the video processor entry of :data:`VIDEO_PROCESSORS`, chat_template.jinja)."""
    import json

    if not isinstance(getattr(processor, "video_processor", None), NoVideoProcessor):
        processor.save_pretrained(path)
        return
    processor.tokenizer._set_processor_class(type(processor).__name__)
    processor.tokenizer.save_pretrained(path)
    config = processor.to_dict()
    config["video_processor"] = VIDEO_PROCESSORS[kind]
    (path / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (path / "chat_template.jinja").write_text(processor.chat_template)


def _pinpoints(tile: int, n: int) -> list[list[int]]:
    return [[tile * i, tile * j] for i in range(1, n + 1) for j in range(1, n + 1)]


def _build(kind: str):
    """(config, processor, generation eos ids) of a tiny ``kind``."""
    config, processor, eos = _build_parts(kind)
    processor.tokenizer.chat_template = processor.chat_template
    return config, processor, eos


def _build_parts(kind: str):
    """Like :func:`_build`, the chat template on the processor only."""
    import transformers as tf

    if kind == "llava":
        tok = _tokenizer(["<image>"], bos=True)
        (image, pad, bos, eos) = _ids(tok, "<image>", "<pad>", "<s>", "</s>")
        vision = tf.CLIPVisionConfig(**VISION, image_size=56, patch_size=14, projection_dim=32)
        text = tf.LlamaConfig(**LM, vocab_size=_vocab(tok), bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
        config = tf.LlavaConfig(
            vision_config=vision, text_config=text, image_token_index=image, image_seq_length=16,
            vision_feature_select_strategy="default", vision_feature_layer=-2,
        )
        image_processor = tf.CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        processor = tf.LlavaProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
        )
        return config, processor, [eos]

    if kind == "llava_next":
        tok = _tokenizer(["<image>", "[INST]", "[/INST]"], bos=True)
        (image, pad, bos, eos) = _ids(tok, "<image>", "<pad>", "<s>", "</s>")
        vision = tf.CLIPVisionConfig(**VISION, image_size=28, patch_size=14, projection_dim=32)
        text = tf.MistralConfig(
            **LM, vocab_size=_vocab(tok), sliding_window=None, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
        )
        # llava-v1.6: 336 px tiles (24x24 patches), pinpoints 336 x {1x2, 2x1, 2x2, 1x3, 3x1}; here 28 px (2x2)
        grid = [[28, 56], [56, 28], [56, 56], [28, 84], [84, 28]]
        config = tf.LlavaNextConfig(
            vision_config=vision, text_config=text, image_token_index=image, image_grid_pinpoints=grid,
            image_seq_length=4, vision_feature_select_strategy="default", vision_feature_layer=-2,
        )
        image_processor = tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=grid,
        )
        processor = tf.LlavaNextProcessor(
            image_processor=image_processor, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
            num_additional_image_tokens=1, chat_template=LLAVA_NEXT_TEMPLATE,
        )
        return config, processor, [eos]

    if kind == "llava_onevision":
        tok = _tokenizer(["<image>", "<video>", "<|im_start|>", "<|im_end|>"])
        (image, video, im_end, end) = _ids(tok, "<image>", "<video>", "<|im_end|>", "<|endoftext|>")
        vision = tf.SiglipVisionConfig(**VISION, image_size=42, patch_size=14, vision_use_head=False)
        text = tf.Qwen2Config(**LM, vocab_size=_vocab(tok), bos_token_id=end, eos_token_id=im_end, pad_token_id=end)
        # the real pinpoints are 384 x {1..6}^2 with anyres_max_9; here 42 x {1..3}^2 with anyres_max_4
        grid = _pinpoints(42, 3)
        config = tf.LlavaOnevisionConfig(
            vision_config=vision, text_config=text, image_token_index=image, video_token_index=video,
            image_grid_pinpoints=grid, vision_aspect_ratio="anyres_max_4", vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        )
        image_processor = tf.LlavaOnevisionImageProcessorPil(size={"height": 42, "width": 42}, image_grid_pinpoints=grid)
        processor = _processor(
            tf.LlavaOnevisionProcessor, image_processor=image_processor, tokenizer=tok, num_image_tokens=9,
            vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_4", chat_template=ONEVISION_TEMPLATE,
        )
        return config, processor, [im_end, end]

    if kind in ("qwen2_vl", "qwen2_5_vl"):
        specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
        tok = _tokenizer(specials)
        (start, end_, image, video, im_end, end) = _ids(
            tok, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_end|>", "<|endoftext|>",
        )
        # M-RoPE: head_dim 16, so 8 rotary frequencies split (temporal, height, width)
        rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}
        text = dict(**LM, vocab_size=_vocab(tok), rope_parameters=rope, bos_token_id=end, eos_token_id=im_end,
                    pad_token_id=end)
        if kind == "qwen2_vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2)
            config = tf.Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=image, video_token_id=video,
                                      vision_start_token_id=start, vision_end_token_id=end_)
        else:
            # window of 56 px = 2x2 merged tokens; layer 1 full attention, layer 0 windowed (like 7/15/23/31 of 32)
            vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
            config = tf.Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=image,
                                         video_token_id=video, vision_start_token_id=start, vision_end_token_id=end_)
        # real: min_pixels 56*56, max_pixels 28*28*1280; here between 2x2 and 4x4 merged tokens (of 28x28 px)
        image_processor = tf.Qwen2VLImageProcessorPil(
            size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 16}, patch_size=14, merge_size=2,
            temporal_patch_size=2,
        )
        cls = tf.Qwen2VLProcessor if kind == "qwen2_vl" else tf.Qwen2_5_VLProcessor
        processor = _processor(cls, image_processor=image_processor, tokenizer=tok, chat_template=QWEN_VL_TEMPLATE)
        return config, processor, [im_end, end]

    if kind == "qwen3_vl":
        specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
        tok = _tokenizer(specials)
        (start, end_, image, video, im_end, end) = _ids(
            tok, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_end|>", "<|endoftext|>",
        )
        # interleaved M-RoPE: head_dim 16, 8 rotary frequencies, (T, H, W) sections [4, 2, 2] (real: [24, 20, 20] of 64)
        rope = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
        text = dict(**LM, head_dim=16, vocab_size=_vocab(tok), rope_parameters=rope, bos_token_id=end,
                    eos_token_id=im_end, pad_token_id=end)
        # patch 16, merge 2x2 (32 px tokens); a learned 8x8 position grid (real 48x48) resampled to the photo's grid;
        # deepstack: vision layer 0's merged features are added to LM layer 0's output at the image tokens (real:
        # vision layers 5, 11, 17 into LM layers 0, 1, 2)
        vision = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        config = tf.Qwen3VLConfig(vision_config=vision, text_config=text, image_token_id=image, video_token_id=video,
                                  vision_start_token_id=start, vision_end_token_id=end_)
        # real: mean = std = 0.5, 16 * 16 * 2 * 2 * 64 .. 2^24 pixels; here between 2x2 and 4x4 merged tokens (32 px)
        image_processor = tf.Qwen2VLImageProcessorPil(
            size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 16}, patch_size=16, merge_size=2,
            temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        )
        processor = _processor(tf.Qwen3VLProcessor, image_processor=image_processor, tokenizer=tok,
                               chat_template=QWEN3_VL_TEMPLATE)
        return config, processor, [im_end, end]

    if kind in ("idefics3", "smolvlm"):
        rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
        specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *rows]
        if kind == "smolvlm":
            specials += ["<|im_start|>", "<video>"]
        tok = _tokenizer(specials)
        (image, eou, pad, bos) = _ids(tok, "<image>", "<end_of_utterance>", "<pad>", "<s>")
        text = tf.LlamaConfig(**LM, vocab_size=_vocab(tok), bos_token_id=bos, eos_token_id=eou, pad_token_id=pad)
        # tile 56 (patch 14) or 32 (patch 8): 4x4 patches, pixel shuffle 2 -> 4 tokens a tile
        tile, patch = (56, 14) if kind == "idefics3" else (32, 8)
        vision = dict(**VISION, image_size=tile, patch_size=patch)
        size = {"longest_edge": 3 * tile}  # real: 4 * 364 (Idefics3), 4 * 512 (SmolVLM-256M)
        if kind == "idefics3":
            config = tf.Idefics3Config(vision_config=vision, text_config=text, image_token_id=image, scale_factor=2,
                                       pad_token_id=pad)
            image_processor = tf.Idefics3ImageProcessorPil(size=size, max_image_size={"longest_edge": tile})
            processor = tf.Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                                             chat_template=IDEFICS3_TEMPLATE)
        else:
            config = tf.SmolVLMConfig(vision_config=vision, text_config=text, image_token_id=image, scale_factor=2,
                                      pad_token_id=pad)
            image_processor = tf.SmolVLMImageProcessorPil(size=size, max_image_size={"longest_edge": tile})
            processor = _processor(tf.SmolVLMProcessor, image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                                   chat_template=SMOLVLM_TEMPLATE)
        return config, processor, [eou]

    if kind == "paligemma":
        # google/paligemma-3b-pt-224: Gemma tokenizer (<bos> <eos> <pad>, BOS prepended, which the processor turns off),
        # <image> at the end of the vocabulary, the processor adds 1024 <locNNNN> and 128 <segNNN> tokens
        tok = _gemma_tokenizer(["<image>"])
        (image, pad, bos, eos) = _ids(tok, "<image>", "<pad>", "<bos>", "<eos>")
        image_processor = tf.SiglipImageProcessorPil(size={"height": 56, "width": 56}, resample=3,
                                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
        image_processor.image_seq_length = 16  # real: 224 px, patch 14: 256
        processor = tf.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
        vision = tf.SiglipVisionConfig(**VISION, image_size=56, patch_size=14, vision_use_head=False)
        text = tf.GemmaConfig(**LM, head_dim=16, vocab_size=_vocab(tok), bos_token_id=bos, eos_token_id=eos,
                              pad_token_id=pad)
        config = tf.PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=image,
                                    projection_dim=LM["hidden_size"], hidden_size=LM["hidden_size"])
        return config, processor, [eos]

    if kind == "gemma3":
        # google/gemma-3-4b-it: 896 px, patch 14 (64x64 patches), pooled 4x4 into 16x16 = 256 tokens; here 64 px,
        # patch 8 (8x8 patches), pooled 2x2 into 4x4 = 16 tokens. Sliding window 1024 there (5 of 6 layers), 16 here
        # (layer 0 of 2), shorter than the chat prompt, so that the window cuts keys.
        tok = _gemma_tokenizer(["<start_of_turn>", "<end_of_turn>", *GEMMA3_IMAGE_TOKENS.values()],
                               extra=GEMMA3_IMAGE_TOKENS)
        (image, boi, eoi, pad, bos, eos, eot) = _ids(tok, "<image_soft_token>", "<start_of_image>", "<end_of_image>",
                                                     "<pad>", "<bos>", "<eos>", "<end_of_turn>")
        vision = tf.SiglipVisionConfig(**VISION, image_size=64, patch_size=8, vision_use_head=False)
        text = tf.Gemma3TextConfig(**LM, head_dim=16, vocab_size=_vocab(tok), sliding_window=GEMMA3_WINDOW,
                                   layer_types=["sliding_attention", "full_attention"], query_pre_attn_scalar=16,
                                   bos_token_id=bos, eos_token_id=[eos, eot], pad_token_id=pad)
        config = tf.Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=16, image_token_index=image,
                                 boi_token_index=boi, eoi_token_index=eoi)
        image_processor = tf.Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, resample=2, image_mean=[0.5] * 3,
                                                     image_std=[0.5] * 3, do_pan_and_scan=False)
        processor = tf.Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=16,
                                       chat_template=GEMMA3_TEMPLATE)
        return config, processor, [eos, eot]

    raise ValueError(f"unknown VLM kind {kind!r}; one of {VLM_KINDS + GEMMA_KINDS}")


def make_vlm(root: Path, kind: str, seed: int = 0) -> Path:
    """Build a tiny random ``kind`` vision-language model with its processor, save both under ``root/kind``, return
    the folder (loads with ``AutoProcessor`` / ``AutoModelForImageTextToText``; float32; deterministic in ``seed``)."""
    from transformers import AutoModelForImageTextToText

    config, processor, eos = _build(kind)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    # random logits are nearly flat (|logit| < 1 over ~450 tokens), so greedy decoding would hit EOS now and then:
    # a zero output row gives EOS the logit 0, below the largest of the others on every prompt
    with torch.no_grad():
        model.get_output_embeddings().weight[eos] = 0.0
    gen = model.generation_config
    gen.eos_token_id = eos if len(eos) > 1 else eos[0]
    gen.pad_token_id = processor.tokenizer.pad_token_id
    gen.bos_token_id = processor.tokenizer.bos_token_id
    gen.do_sample = False
    path = Path(root) / kind
    model.save_pretrained(path)
    _save_processor(processor, path, kind)
    return path


def cache_kwarg(model) -> str:
    """The name of the forward's KV-cache argument: ``cache`` from transformers 5.25 (``past_key_values`` still
    works there, with a deprecation warning), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def extend_inputs(inputs: dict, new_ids: torch.Tensor, kind: str | None = None, fill: int | None = None) -> dict:
    """The processor's ``inputs`` with ``new_ids`` (``[1, n]``, generated tokens) appended: ``input_ids``, an
    ``attention_mask`` of ones, Qwen's ``mm_token_type_ids`` (0 = text) and PaliGemma's / Gemma-3's
    ``token_type_ids`` (``fill``, default :data:`GENERATED_TOKEN_TYPE` of ``kind``) extended; PaliGemma's ``labels``
    dropped; the pixel inputs unchanged. A forward over these (pixel inputs and all) gives the logits a prefill plus
    n decode steps gives."""
    out = {k: v for k, v in inputs.items() if k != "labels"}
    if "token_type_ids" in inputs:
        fill = GENERATED_TOKEN_TYPE[kind] if fill is None else fill
        out["token_type_ids"] = torch.cat([inputs["token_type_ids"], torch.full_like(new_ids, fill)], 1)
    out["input_ids"] = torch.cat([inputs["input_ids"], new_ids], 1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    if "mm_token_type_ids" in inputs:
        out["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(new_ids)], 1)
    return out
