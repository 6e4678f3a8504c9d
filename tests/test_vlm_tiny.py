"""The tiny vision-language models of :mod:`vlm_tiny`: they load offline, a photo goes through the chat template and
the processor, generation runs, eager attention gives the language model's ``[1, H, N, N]`` per layer, and one
decode step after a prefill (no pixel inputs) gives the logits of a full forward over prompt + generated tokens."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from vlm_tiny import (GEMMA3_WINDOW, GEMMA_KINDS, GENERATED_TOKEN_TYPE, MESSAGES, QUESTION, REQUIRES, VLM_KINDS,
                      cache_kwarg, extend_inputs, load_processor, make_vlm)

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
    "paligemma": "<image>What is on the table?",  # no chat template: the plain prompt attnviz gives the processor
    "gemma3": "<bos><start_of_turn>user\n<start_of_image>What is on the table?<end_of_turn>\n<start_of_turn>model\n",
}
PROMPTS["qwen2_5_vl"] = PROMPTS["qwen2_vl"]
PROMPTS["qwen3_vl"] = PROMPTS["qwen2_vl"].removeprefix("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
#: image tokens for the square (224 px) photo
SQUARE_TOKENS = {"llava": 16, "llava_next": 24, "llava_onevision": 51, "qwen2_vl": 16, "qwen2_5_vl": 16, "qwen3_vl": 16,
                 "idefics3": 40, "smolvlm": 40, "paligemma": 16, "gemma3": 16}
#: what the processor returns, per kind
INPUT_KEYS = {
    "llava": {"input_ids", "attention_mask", "pixel_values"},
    "llava_next": {"input_ids", "attention_mask", "pixel_values", "image_sizes"},
    "llava_onevision": {"input_ids", "attention_mask", "pixel_values", "image_sizes", "batch_num_images"},
    "qwen2_vl": {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"},
    "idefics3": {"input_ids", "attention_mask", "pixel_values", "pixel_attention_mask"},
}
INPUT_KEYS["qwen2_5_vl"] = INPUT_KEYS["qwen3_vl"] = INPUT_KEYS["qwen2_vl"]
INPUT_KEYS["smolvlm"] = INPUT_KEYS["idefics3"]
INPUT_KEYS["paligemma"] = {"input_ids", "attention_mask", "pixel_values", "token_type_ids", "labels"}
INPUT_KEYS["gemma3"] = {"input_ids", "attention_mask", "pixel_values", "token_type_ids"}


def _kinds():
    """VLM_KINDS, each skipped where a package its processor needs is missing."""
    for kind in dict.fromkeys(VLM_KINDS + GEMMA_KINDS):
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


def _text(processor) -> str:
    """The chat template's text for MESSAGES, or (PaliGemma: no template) the plain prompt with its ``<image>``."""
    if not processor.chat_template:
        return processor.image_token + QUESTION
    return processor.apply_chat_template(MESSAGES, add_generation_prompt=True)


def _inputs(processor, shape, labels: bool = False):
    """The processor's inputs for ``_text`` and the photo; a text that begins with BOS without the tokenizer's own
    (Gemma-3's, whose tokenizer adds one: as ``processor.apply_chat_template(tokenize=True)`` does); PaliGemma's
    ``labels`` only with ``labels``."""
    text = _text(processor)
    bos = processor.tokenizer.bos_token
    kwargs = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
    out = processor(images=_photo(shape), text=text, return_tensors="pt", **kwargs)
    if not labels:
        out.pop("labels", None)
    return out


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
        assert type(processor).__name__ in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor", "Qwen3VLProcessor",
                                            "LlavaOnevisionProcessor", "SmolVLMProcessor")
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__.lower().replace("_", "").startswith(kind.replace("_", ""))
    assert next(model.parameters()).dtype == torch.float32
    saved = json.loads((path / "config.json").read_text())
    assert saved.get("_attn_implementation") is None and saved["text_config"].get("_attn_implementation") is None
    assert model.generation_config.eos_token_id is not None
    # Gemma-3's processor.image_token_id is <start_of_image>, which it expands; the repeated token is the tokenizer's
    repeated = processor.tokenizer.image_token_id if kind == "gemma3" else processor.image_token_id
    assert model.config.image_token_id == repeated
    assert model.config.text_config.max_position_embeddings >= 2048
    assert model.config.text_config.vocab_size >= len(processor.tokenizer)


@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_places_the_image(kind, vlm):
    """The processor's and the tokenizer's chat templates give the real checkpoint's prompt layout; without
    add_generation_prompt the assistant's turn is not opened (but Mistral's [INST] ... [/INST] has no such turn)."""
    _, processor, _ = vlm(kind)
    if kind == "paligemma":  # like the real checkpoints: no chat template, a plain prompt
        assert not processor.chat_template and not processor.tokenizer.chat_template
        assert _text(processor) == PROMPTS[kind]
        return
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
    rows that sum to 1, causal -- but PaliGemma's prompt (its prefix) and each Gemma-3 image's tokens attend each
    other both ways, and Gemma-3's sliding-window layer sees only the last GEMMA3_WINDOW keys."""
    _, processor, model = vlm(kind)
    inputs = _inputs(processor, shape, labels=True)
    assert set(inputs) == INPUT_KEYS[kind]
    inputs.pop("labels", None)
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
    for layer, att in enumerate(out.attentions):
        assert att.shape == (1, text.num_attention_heads, N, N)
        torch.testing.assert_close(att.sum(-1), torch.ones(1, text.num_attention_heads, N))
        allowed = _allowed_keys(kind, model, inputs, layer)
        assert att[0][:, ~allowed].abs().sum() == 0
        assert (att[0][:, allowed] > 0).all()


def _allowed_keys(kind: str, model, inputs, layer: int) -> torch.Tensor:
    """Bool ``[N, N]``: the keys each query of the prompt's forward may see in ``layer``: causal; PaliGemma: also
    the whole prefix (token_type_ids 0) from the prefix; Gemma-3: also every token of the same image (a run of
    token_type_ids 1), and in a sliding-window layer only keys ``k > q - GEMMA3_WINDOW``."""
    N = inputs["input_ids"].shape[1]
    q, k = torch.arange(N)[:, None], torch.arange(N)[None, :]
    allowed = k <= q
    if kind == "paligemma":
        prefix = inputs["token_type_ids"][0] == 0
        allowed |= prefix[:, None] & prefix[None, :]
    if kind == "gemma3":
        image = inputs["token_type_ids"][0] == 1
        block = torch.cumsum(image & ~torch.nn.functional.pad(image, (1, 0))[:-1], 0)
        allowed |= image[:, None] & image[None, :] & (block[:, None] == block[None, :])
        if model.config.text_config.layer_types[layer] == "sliding_attention":
            allowed &= k > q - GEMMA3_WINDOW
    return allowed


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
        full = model(**extend_inputs(inputs, torch.tensor([new]), kind)).logits[0, N - 1:]
    torch.testing.assert_close(torch.stack(steps), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_seed_makes_the_weights(kind, tmp_path):
    from safetensors.torch import load_file

    a = load_file(make_vlm(tmp_path / "a", kind) / "model.safetensors")
    b = load_file(make_vlm(tmp_path / "b", kind) / "model.safetensors")
    c = load_file(make_vlm(tmp_path / "c", kind, seed=1) / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ------------------------------------------- PaliGemma and Gemma-3 through attnviz: token_type_ids, BOS, sliding window


def _eager_reference(model, inputs, generated, kind, fill=None):
    """Eager ``output_attentions`` of one forward over prompt + ``generated`` with the prompt's pixel inputs and
    ``token_type_ids`` extended by ``fill`` (default: GENERATED_TOKEN_TYPE[kind]); float32 ``[L, H, T, P + T]``."""
    P, T = inputs["input_ids"].shape[1], len(generated)
    with torch.no_grad():
        out = model(**extend_inputs(inputs, torch.tensor([list(generated)]), kind, fill), output_attentions=True,
                    use_cache=False)
    return torch.stack([a[0, :, P:P + T, :P + T] for a in out.attentions]).float()


@pytest.mark.parametrize("shape", ["wide", "tall"])
@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("kind", GEMMA_KINDS)
def test_attnviz_rows_equal_eager_and_ids_equal_generate(kind, chat, shape, vlm):
    """attend_vlm_generation on PaliGemma and Gemma-3: every generated token's
    row, in every layer and head, equals eager attention of one forward over prompt + generated ids with the same
    pixel inputs and token_type_ids extended by GENERATED_TOKEN_TYPE (PaliGemma 1, Gemma-3 0) within 1e-5, and the
    other value differs by far more; the greedy ids equal model.generate. Gemma-3's prompt is longer than its
    sliding window: in layer 0 each row is 0 on the keys before the window (attnviz's plain DynamicCache keeps them,
    the mask cuts them) and positive inside it, as in eager. The prompt attnviz builds: PaliGemma (no chat template;
    --chat refused) ``<image>`` + prompt -> 16 image tokens, ``<bos>``, prompt, ``\\n``, token_type_ids 0; Gemma-3
    one ``<bos>``, then ``\\n\\n<start_of_image>``, 16 soft tokens (token_type_ids 1), ``<end_of_image>\\n\\n``."""
    import attnviz.vlm as V
    from attnviz.errors import UsageError

    path, _, model = vlm(kind)
    vm = V.load_vlm(str(path))
    photo = _photo(shape)
    if kind == "paligemma" and chat:
        with pytest.raises(UsageError, match="no chat template"):
            V.prepare_vlm_prompt(vm, QUESTION, photo, chat=True)
        return
    T = 8
    g = V.attend_vlm_generation(QUESTION, photo, vm, chat=chat, max_new_tokens=T).generation
    prepared = V.prepare_vlm_prompt(vm, QUESTION, photo, chat=chat)
    ids = prepared.inputs["input_ids"][0].tolist()
    tokens = vm.processor.tokenizer.convert_ids_to_tokens(ids)
    types = prepared.inputs["token_type_ids"][0].tolist()
    image = model.config.image_token_id
    assert "labels" not in prepared.inputs
    if kind == "paligemma":
        assert prepared.text == "<image>" + QUESTION
        assert tokens[:17] == ["<image>"] * 16 + ["<bos>"] and tokens[-1] == "Ċ" and set(types) == {0}
    else:
        assert tokens.count("<bos>") == 1 and tokens[0] == "<bos>"
        start = tokens.index("<start_of_image>")
        assert tokens[start - 2:start] == ["Ċ", "Ċ"] and tokens[start + 17:start + 20] == ["<end_of_image>", "Ċ", "Ċ"]
        assert types == [int(t == image) for t in ids]
    assert list(prepared.image_positions) == [i for i, t in enumerate(ids) if t == image] and len(prepared.image_positions) == 16
    P = len(ids)
    assert g.prompt_length == P and g.num_generated == T
    ref = _eager_reference(model, prepared.inputs, g.generated_ids, kind)
    assert ref.shape == g.attentions.shape
    diff = (ref - g.attentions).abs().max().item()
    assert diff <= 1e-5, diff
    wrong = _eager_reference(model, prepared.inputs, g.generated_ids, kind, fill=1 - GENERATED_TOKEN_TYPE[kind])
    assert (wrong - g.attentions).abs().max().item() > 1e-3
    with torch.no_grad():
        out = model.generate(**prepared.inputs, max_new_tokens=T, do_sample=False)
    assert list(g.generated_ids) == out[0, P:].tolist()
    if kind == "gemma3":
        assert model.config.text_config.layer_types[0] == "sliding_attention" and P > GEMMA3_WINDOW
        for i in range(T):
            cut = P + i - GEMMA3_WINDOW + 1  # keys before it are outside layer 0's window
            assert g.attentions[0, :, i, :cut].abs().max() == 0 and ref[0, :, i, :cut].abs().max() == 0
            assert (g.attentions[0, :, i, cut:P + i + 1] > 0).all()
            assert (g.attentions[1, :, i, :P + i + 1] > 0).all()  # the full-attention layer sees every key


def test_gemma_eager_generation_rows_extends_token_type_ids(vlm):
    """attnviz.vlm.eager_generation_rows (the reference of attnviz check) on PaliGemma and Gemma-3 equals the
    reference above, whose token_type_ids are extended by GENERATED_TOKEN_TYPE (attnviz.vlm.GENERATED_TOKEN_TYPE,
    the same rule; extending with the other value, as with Qwen's mm_token_type_ids zeros for PaliGemma, breaks it)."""
    import attnviz.vlm as V

    diffs = {}
    for kind in GEMMA_KINDS:
        path, _, model = vlm(kind)
        vm = V.load_vlm(str(path))
        prepared = V.prepare_vlm_prompt(vm, QUESTION, _photo("wide"), chat=False)
        generated = [5, 17, 42, 99]
        ref = _eager_reference(model, prepared.inputs, generated, kind)
        diffs[kind] = (V.eager_generation_rows(vm, prepared, generated) - ref).abs().max().item()
    assert max(diffs.values()) <= 1e-5, diffs
    assert V.GENERATED_TOKEN_TYPE == GENERATED_TOKEN_TYPE
