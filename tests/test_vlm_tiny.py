"""The tiny vision-language models of :mod:`vlm_tiny`: they load offline, a photo goes through the chat template and
the processor, generation runs, eager attention gives the language model's ``[1, H, N, N]`` per layer, and one
decode step after a prefill (no pixel inputs) gives the logits of a full forward over prompt + generated tokens."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vlm_tiny import MESSAGES, REQUIRES, VLM_KINDS, cache_kwarg, extend_inputs, load_processor, make_vlm

COFFEE = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "coffee.png"
#: square, wide and tall variants of the photo
SHAPES = {"square": (224, 224), "wide": (300, 120), "tall": (120, 300)}

#: the chat template's text for MESSAGES, with the image placeholder where the real checkpoints put it
PROMPTS = {
    "llava": "USER: <image>\nWhat is on the table? ASSISTANT:",
    "llava_next": "[INST] <image>\nWhat is on the table? [/INST]",
    "llava_onevision": "<|im_start|>user <image>\nWhat is on the table?<|im_end|>\n<|im_start|>assistant\n",
    "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|><|image_pad|><|vision_end|>What is on the table?<|im_end|>\n<|im_start|>assistant\n",
    "idefics3": "<s>User:<image>What is on the table?<end_of_utterance>\nAssistant:",
    "smolvlm": "<|im_start|>User:<image>What is on the table?<end_of_utterance>\nAssistant:",
}
PROMPTS["qwen2_5_vl"] = PROMPTS["qwen2_vl"]
#: image tokens for the square (224 px) photo
SQUARE_TOKENS = {"llava": 16, "llava_next": 24, "llava_onevision": 51, "qwen2_vl": 16, "qwen2_5_vl": 16,
                 "idefics3": 40, "smolvlm": 40}
#: what the processor returns, per kind
INPUT_KEYS = {
    "llava": {"input_ids", "attention_mask", "pixel_values"},
    "llava_next": {"input_ids", "attention_mask", "pixel_values", "image_sizes"},
    "llava_onevision": {"input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images"},
    "qwen2_vl": {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"},
    "idefics3": {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"},
}
INPUT_KEYS["qwen2_5_vl"] = INPUT_KEYS["qwen2_vl"]
INPUT_KEYS["smolvlm"] = INPUT_KEYS["idefics3"]


def _kinds():
    """VLM_KINDS, each skipped where a package its processor needs is missing."""
    for kind in VLM_KINDS:
        missing = [m for m in REQUIRES.get(kind, ()) if importlib.util.find_spec(m) is None]
        marks = [pytest.mark.skip(reason=f"{kind} needs {', '.join(missing)}")] if missing else []
        yield pytest.param(kind, marks=marks)


KINDS = list(_kinds())


def _photo(shape: str):
    """The coffee photo from ../shared if present, else a synthetic one (a gradient with a few shapes), resized to
    the square, wide or tall size."""
    from PIL import Image, ImageDraw

    if COFFEE.exists():
        img = Image.open(COFFEE).convert("RGB")
    else:
        y, x = torch.meshgrid(torch.linspace(0, 255, 400), torch.linspace(0, 255, 600), indexing="ij")
        img = Image.fromarray(torch.stack([x, y, 255 - x], -1).to(torch.uint8).numpy())
        draw = ImageDraw.Draw(img)
        draw.ellipse((200, 120, 400, 300), fill=(120, 70, 30))
        draw.rectangle((40, 300, 560, 340), fill=(200, 200, 200))
    return img.resize(SHAPES[shape])


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    """vlm(kind) -> (folder, processor, eager model), built once per kind."""
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("tiny-vlm")
    cache = {}

    def get(kind):
        if kind not in cache:
            path = make_vlm(root, kind)
            model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
            cache[kind] = path, load_processor(path), model
        return cache[kind]

    return get


def _inputs(processor, shape):
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    return processor(images=_photo(shape), text=text, return_tensors="pt")


@pytest.mark.parametrize("kind", KINDS)
def test_folder_loads_offline(kind, vlm):
    """AutoProcessor loads the folder -- or, for a processor with a video processor where torchvision is missing,
    raises the ImportError it raises for the real checkpoints and load_processor builds it --, and
    AutoModelForImageTextToText loads the model: float32, no attention implementation saved, EOS set; the config's
    image token is the processor's."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import is_torchvision_available

    path, processor, _ = vlm(kind)
    try:
        AutoProcessor.from_pretrained(path)
    except ImportError as err:
        assert not is_torchvision_available() and "torchvision" in str(err).lower()
        assert type(processor).__name__ in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor", "LlavaOnevisionProcessor",
                                            "SmolVLMProcessor")
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__.lower().replace("_", "").startswith(kind.replace("_", ""))
    assert next(model.parameters()).dtype == torch.float32
    saved = json.loads((path / "config.json").read_text())
    assert saved.get("_attn_implementation") is None and saved["text_config"].get("_attn_implementation") is None
    assert model.generation_config.eos_token_id is not None
    assert model.config.image_token_id == processor.image_token_id
    assert model.config.text_config.max_position_embeddings >= 2048
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)


@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_places_the_image(kind, vlm):
    """The processor's and the tokenizer's chat templates give the real checkpoint's prompt layout; without
    add_generation_prompt the assistant's turn is not opened (but Mistral's [INST] ... [/INST] has no such turn)."""
    _, processor, _ = vlm(kind)
    assert processor.apply_chat_template(MESSAGES, add_generation_prompt=True) == PROMPTS[kind]
    assert processor.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == PROMPTS[kind]
    if kind != "llava_next":
        plain = processor.apply_chat_template(MESSAGES)
        assert plain != PROMPTS[kind] and PROMPTS[kind].startswith(plain)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_photo_forward_and_eager_attentions(kind, shape, vlm):
    """Square, wide and tall photos: image tokens in input_ids, the processor's input keys, and an eager forward
    whose ``attentions`` are the language model's alone: one ``[1, H, N, N]`` per LM layer, N = len(input_ids),
    causal rows that sum to 1."""
    _, processor, model = vlm(kind)
    inputs = _inputs(processor, shape)
    assert set(inputs) == INPUT_KEYS[kind]
    ids = inputs["input_ids"]
    n_image = int((ids == model.config.image_token_id).sum())
    assert n_image > 0
    if shape == "square":
        assert n_image == SQUARE_TOKENS[kind]
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    N = ids.shape[1]
    text = model.config.text_config
    assert out.logits.shape[:2] == (1, N)
    assert len(out.attentions) == text.num_hidden_layers
    for att in out.attentions:
        assert att.shape == (1, text.num_attention_heads, N, N)
        torch.testing.assert_close(att.sum(-1), torch.ones(1, text.num_attention_heads, N))
        assert att.triu(1).abs().max() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_generate(kind, vlm):
    """Greedy generation gives 4 new tokens (no early EOS) for each photo shape."""
    _, processor, model = vlm(kind)
    for shape in SHAPES:
        inputs = _inputs(processor, shape)
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 4


@pytest.mark.parametrize("kind", KINDS)
def test_decode_steps_match_full_forward(kind, vlm):
    """Prefill with the pixel inputs into a DynamicCache, then 3 decode steps of one token each, without pixel
    inputs and without attention_mask (Qwen2-VL's M-RoPE takes its position from the rope_deltas the prefill cached;
    with a full-length attention_mask and no position_ids it breaks), give the logits of one full forward over
    prompt + generated tokens with the pixel inputs (and mm_token_type_ids extended, for Qwen)."""
    from transformers import DynamicCache

    _, processor, model = vlm(kind)
    inputs = _inputs(processor, "wide")
    N = inputs["input_ids"].shape[1]
    arg = cache_kwarg(model)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        steps = [model(**inputs, **{arg: cache}, use_cache=True).logits[0, -1]]
        new = []
        for _ in range(3):
            new.append(int(steps[-1].argmax()))
            steps.append(model(input_ids=torch.tensor([[new[-1]]]), **{arg: cache}, use_cache=True).logits[0, -1])
        assert cache.get_seq_length() == N + 3
        full = model(**extend_inputs(inputs, torch.tensor([new]))).logits[0, N - 1:]
    torch.testing.assert_close(torch.stack(steps), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_seed_makes_the_weights(kind, tmp_path):
    from safetensors.torch import load_file

    a = load_file(make_vlm(tmp_path / "a", kind) / "model.safetensors")
    b = load_file(make_vlm(tmp_path / "b", kind) / "model.safetensors")
    c = load_file(make_vlm(tmp_path / "c", kind, seed=1) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
