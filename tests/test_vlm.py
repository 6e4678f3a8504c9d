"""Vision-language models while they answer (attnviz generate --image): every generated token's rows equal one eager
forward over the prompt (with the same pixel inputs) and the generated ids, the greedy ids equal model.generate, the
image tokens' shares and maps add up, and the command writes what it says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm_tiny import NO_CHAT, VLM_KINDS, extend_inputs, make_vlm

PROMPT = "What is on the table?"


def _photo(width: int = 320, height: int = 200):
    """A photo with structure (a gradient and a bright square), deterministic."""
    from PIL import Image

    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    arr = np.stack([x, y, 255 - x], -1)
    arr[height // 4: height // 2, width // 3: width // 2] = 255
    return Image.fromarray(arr.round().astype(np.uint8))


@pytest.fixture(scope="module")
def vlm_models(tmp_path_factory):
    made: dict[str, object] = {}

    def get(kind: str):
        if kind not in made:
            made[kind] = make_vlm(tmp_path_factory.mktemp(kind), kind)
        return made[kind]

    return get


def _eager_rows(path, prepared, generated_ids) -> torch.Tensor:
    """Eager ``output_attentions`` of one forward over prompt + generated ids with the prompt's pixel inputs, from a
    model loaded afresh with eager attention (independent of attnviz.vlm.eager_generation_rows): float32
    ``[L, H, T, P + T]``, the generated positions' rows; and that model."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    T = len(generated_ids)
    inputs = extend_inputs(dict(prepared.inputs), torch.tensor([list(generated_ids)]), model.config.model_type)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    att = torch.stack([a[0] for a in out.attentions])  # [L, H, N, N]: the language model's layers
    P = prepared.inputs["input_ids"].shape[1]
    return att[:, :, P:P + T, :P + T].float(), model


COFFEE = Path(__file__).resolve().parents[2] / "shared" / "samples" / "coffee.png"


@pytest.mark.parametrize("kind", VLM_KINDS)
@pytest.mark.parametrize("size", [(320, 200), (200, 320), "coffee"])
def test_rows_equal_eager_and_ids_equal_generate(vlm_models, kind, size):
    """Every generated token's row, in every layer and head, equals eager attention of one forward over prompt +
    generated ids with the same pixel inputs (1e-5, float32); the greedy ids equal model.generate; the image
    positions are the processor's image tokens, as many as the layout places."""
    from attnviz.vlm import attend_vlm_generation, load_vlm, prepare_vlm_prompt

    path = vlm_models(kind)
    vm = load_vlm(str(path))
    assert vm.model_type == kind  # what attnviz.verify.PROVEN_TYPES lists
    if size == "coffee":  # a real photo (600x400)
        if not COFFEE.exists():
            pytest.skip("../shared/samples/coffee.png is absent (real photos live beside the project)")
        from PIL import Image

        photo = Image.open(COFFEE)
    else:
        photo = _photo(*size)
    chat = kind not in NO_CHAT
    vgen = attend_vlm_generation(PROMPT, photo, vm, chat=chat, max_new_tokens=6)
    g = vgen.generation
    prepared = prepare_vlm_prompt(vm, PROMPT, photo, chat=chat)
    ids = prepared.inputs["input_ids"][0]
    assert list(vgen.image_positions) == torch.nonzero(ids == vm.image_token_id).flatten().tolist()
    assert vgen.layout.num_tokens == vgen.num_image_tokens > 0
    assert g.prompt_length == len(ids)
    ref, model = _eager_rows(path, prepared, g.generated_ids)
    assert ref.shape == g.attentions.shape
    assert (ref - g.attentions).abs().max().item() <= 1e-5
    with torch.no_grad():
        out = model.generate(**prepared.inputs, max_new_tokens=6, do_sample=False)
    want = out[0, g.prompt_length:].tolist()
    assert list(g.generated_ids) == want[: g.num_generated]
    sums = g.attentions.sum(-1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


def test_shares_partition_each_row_and_the_image_map_adds_up(vlm_models):
    from attnviz.analysis import vlm as A
    from attnviz.vlm import attend_vlm_generation, load_vlm

    vgen = attend_vlm_generation(PROMPT, _photo(), load_vlm(str(vlm_models("llava"))), chat=True, max_new_tokens=5)
    s = A.shares(vgen)
    g = vgen.generation
    assert s.values.shape == (g.num_generated, g.num_layers, 4)
    assert np.allclose(s.values.sum(-1), 1.0, atol=1e-5)
    att = g.attentions.double()
    pos = list(vgen.image_positions)
    want = att[:, :, :, pos].sum(-1).mean(1).mean(0).numpy()  # [T]: sum over image keys, mean heads, mean layers
    assert np.allclose(s.image_share, want, atol=1e-9)
    first = att[:, :, :, 0].mean(1).T.numpy()
    assert np.allclose(s.group("first"), first, atol=1e-9)
    w = A.image_weights(vgen, 2)
    assert w.shape == (vgen.num_image_tokens,) and np.isclose(w.sum(), want[2])
    regions = A.top_regions(w, vgen.layout, 3)
    assert [r.weight for r in regions] == sorted(w, reverse=True)[:3]
    W, H = vgen.layout.image_size
    for r in regions:
        x0, y0, x1, y1 = r.box
        assert 0 <= x0 < x1 <= W + 1e-6 and 0 <= y0 < y1 <= H + 1e-6
    collapsed = A.collapse_image(g, vgen.image_positions)
    assert collapsed.attentions.shape[-1] == g.attentions.shape[-1] - vgen.num_image_tokens + 1
    assert torch.allclose(collapsed.attentions.sum(-1), g.attentions.sum(-1), atol=1e-6)
    col = collapsed.context.index(f"<image ×{vgen.num_image_tokens}>")
    assert torch.allclose(collapsed.attentions[..., col], g.attentions[..., pos].sum(-1), atol=1e-6)


def test_paint_puts_each_weight_in_its_box(vlm_models):
    from attnviz.analysis import vlm as A
    from attnviz.vlm import attend_vlm_generation, load_vlm

    vgen = attend_vlm_generation(PROMPT, _photo(), load_vlm(str(vlm_models("llava"))), chat=True, max_new_tokens=2)
    layout = vgen.layout
    weights = np.arange(vgen.num_image_tokens, dtype=float)
    view = layout.views()[0]
    canvas = A.paint(layout, weights, view, max_side=320)
    W, H = layout.image_size
    boxes = layout.token_boxes()
    for t in A.view_tokens(layout, view)[:: max(1, vgen.num_image_tokens // 7)]:
        x0, y0, x1, y1 = boxes[t]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert canvas[int(cy * canvas.shape[0] / H), int(cx * canvas.shape[1] / W)] == t


def test_image_sinks_flag_an_isolated_spike_only(vlm_models):
    from attnviz.analysis import vlm as A
    from attnviz.vlm import attend_vlm_generation, load_vlm

    vgen = attend_vlm_generation(PROMPT, _photo(), load_vlm(str(vlm_models("llava"))), chat=True, max_new_tokens=1)
    layout = vgen.layout
    view = layout.views()[0]
    n = vgen.num_image_tokens
    flat = np.full(n, 1.0 / n)
    assert A.image_sinks(flat, layout, view) == []
    spike = flat.copy()
    spike[5] = 10.0  # 91% of the mass, 10x any neighbour
    assert A.image_sinks(spike, layout, view) == [5]


@pytest.mark.slow
def test_cli_writes_views_json_and_attention_file(vlm_models, tmp_path):
    """The command: one line of image summary, the views, JSON with per-step image shares that equal the saved
    attentions, regions inside the photo, the layout, and --save-attn metadata with the image token positions."""
    from typer.testing import CliRunner

    from attnviz.attention_file import load_attention
    from attnviz.cli import app

    path = vlm_models("llava")
    photo = tmp_path / "photo.png"
    _photo().save(photo)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["generate", PROMPT, "--image", str(photo), "--model", str(path), "--chat", "-n", "5",
                                   "--out", str(out), "--save-attn", str(tmp_path / "a.safetensors"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    T = len(doc["steps"])
    names = {p.split("/")[-1] for p in doc["files"]}
    step = doc["token_view"]["step"]
    assert {"answer.png", "image-share.png", "generation-map.png", "sink-share.png", f"token-{step}.png"} <= names
    for p in doc["files"]:
        assert open(p, "rb").read(8).startswith(b"\x89PNG")
    from safetensors.torch import load_file

    f = load_attention(str(tmp_path / "a.safetensors"))
    att = load_file(str(tmp_path / "a.safetensors"))["attentions"].double()
    pos = doc["image"]["token_positions"]
    assert f.metadata["image_token_positions"] == pos
    assert f.metadata["input_ids"][pos[0]] == f.metadata["input_ids"][pos[-1]]
    assert f.metadata["image_layout"]["image_size"] == [320, 200]
    share = att[:, :, :, pos].sum(-1).mean(1).mean(0)
    for i, entry in enumerate(doc["steps"]):
        assert entry["image_share"] == pytest.approx(float(share[i]), abs=2e-6)
        assert sum(entry["shares"].values()) == pytest.approx(1.0, abs=1e-4)
        for r in entry["regions"]:
            x0, y0, x1, y1 = r["box"]
            assert 0 <= x0 < x1 <= 320.1 and 0 <= y0 < y1 <= 200.1
    assert doc["token_view"]["step"] == int(np.argmax([e["image_share"] for e in doc["steps"]]))
    assert doc["image"]["num_tokens"] == len(pos) and doc["image"]["layout"]["tiles"]
    assert T == 5 or doc["stopped_at_eos"]
    assert "share of a step" in doc["share_rule"]
    by_layer = np.array(doc["image_share_by_layer"])
    assert by_layer.shape == (T, att.shape[0])
    assert np.allclose(by_layer, att[:, :, :, pos].sum(-1).mean(1).T.numpy(), atol=2e-6)


def test_cli_refuses_text_models_and_unproven_vlms_in_one_line(tmp_path, lm_models):
    from typer.testing import CliRunner

    from attnviz.cli import app

    photo = tmp_path / "photo.png"
    _photo().save(photo)
    res = CliRunner().invoke(app, ["generate", PROMPT, "--image", str(photo), "--model", str(lm_models("llama"))])
    assert res.exit_code == 3
    assert "not a vision-language model" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["generate", PROMPT, "--image", str(tmp_path / "missing.jpg"), "--model",
                                   str(lm_models("llama"))])
    assert res.exit_code == 4 and "Traceback" not in res.output


def test_capture_cuts_back_a_kv_cache_before_its_eager_fallback(vlm_models):
    """A vision tower that runs a batch of tiles makes the attnviz path fall back to eager: the KV cache the first
    pass filled is cut back, so the prompt is cached once, not twice."""
    from transformers import AutoModelForImageTextToText, DynamicCache

    from attnviz.capture import CapturePlan, capture
    from attnviz.vlm import load_vlm, prepare_vlm_prompt

    kind = "llava_next" if "llava_next" in VLM_KINDS else "llava_onevision"
    path = vlm_models(kind)
    vm = load_vlm(str(path))
    prepared = prepare_vlm_prompt(vm, PROMPT, _photo(), chat=True)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    cap = capture(model, {**prepared.inputs, "past_key_values": DynamicCache(), "use_cache": True}, CapturePlan())
    assert cap.backend == "eager"
    assert cap.outputs.past_key_values.get_seq_length() == prepared.inputs["input_ids"].shape[1]


def _labels_inside(fig) -> list[str]:
    """Axis labels (colour bars' too) that reach past the figure's edge."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    out = []
    for ax in fig.axes:
        for label in (ax.yaxis.label, ax.xaxis.label):
            if label.get_text():
                b = label.get_window_extent(renderer)
                if b.x0 < -1 or b.y0 < -1 or b.x1 > W + 1 or b.y1 > H + 1:
                    out.append(label.get_text())
    return out


@pytest.mark.parametrize("size", ["screen", "column", "page"])
@pytest.mark.parametrize("kind", ["llava", "llava_onevision", "idefics3"])
def test_views_show_the_numbers_and_fit(vlm_models, kind, size):
    """The token view draws, per view and panel, the step's image weights in their boxes (the heatmap's pixels are
    the weights), one shared scale from 0; the answer view shades each token by its image share; no text overlaps
    or leaves the figure, at screen and column width."""
    from attnviz.analysis import vlm as A
    from attnviz.render.layout import Style, overlapping_texts, texts_outside
    from attnviz.render.vlm import answer_view, image_share_view, token_image_view
    from attnviz.vlm import attend_vlm_generation, load_vlm

    vgen = attend_vlm_generation(PROMPT, _photo(), load_vlm(str(vlm_models(kind))), chat=True, max_new_tokens=6)
    style = Style.from_options(size=size)
    shares = A.shares(vgen)
    fig = token_image_view(vgen, 2, style=style)
    views = vgen.layout.views()
    g = vgen.generation
    heat = [im for ax in fig.axes for im in ax.get_images() if im.get_gid() == "heatmap"]
    panels = 1 + g.num_layers + min(4, g.num_layers * g.num_heads)
    assert len(heat) == panels * len(views)
    mean = A.image_weights(vgen, 2)
    want = A.paint(vgen.layout, mean, views[0], max_side=256)
    sinks = A.image_sinks(mean, vgen.layout, views[0])
    got = np.ma.filled(heat[0].get_array().astype(float), np.nan)
    if not sinks:
        assert np.allclose(got, want, equal_nan=True)
    vmax = heat[0].norm.vmax
    assert heat[0].norm.vmin == 0 and all(h.norm.vmax == vmax for h in heat)
    if len(views) > 1:
        assert {t.get_gid() for t in fig.texts} >= {f"view-{v}" for v in views}
    fig2 = answer_view(vgen, shares, style=style)
    fig3 = image_share_view(vgen, shares, style=style)
    for f in (fig, fig2, fig3):
        assert not overlapping_texts(f), overlapping_texts(f)
        assert not texts_outside(f), texts_outside(f)
        assert not _labels_inside(f), _labels_inside(f)
    boxes = {p.get_gid(): p for ax in fig2.axes for p in ax.patches if (p.get_gid() or "").startswith("token-")}
    assert len(boxes) == g.num_generated
    import matplotlib

    top = int(np.argmax(shares.image_share))  # the shading follows the share: the largest gets the top colour
    assert np.allclose(boxes[f"token-{top}"].get_facecolor(), matplotlib.colormaps["inferno"](1.0), atol=1e-3)


def test_token_view_with_layer_shows_its_heads(vlm_models):
    from attnviz.analysis import vlm as A
    from attnviz.render.vlm import token_image_view
    from attnviz.vlm import attend_vlm_generation, load_vlm

    vgen = attend_vlm_generation(PROMPT, _photo(), load_vlm(str(vlm_models("llava"))), chat=True, max_new_tokens=3)
    fig = token_image_view(vgen, 1, layer=1)
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_images()]
    H = vgen.generation.num_heads
    assert titles == ["layer 1, head mean"] + [f"L1 H{h}" for h in range(H)]
    heat = [im for ax in fig.axes for im in ax.get_images() if im.get_gid() == "heatmap"]
    w = A.image_weights(vgen, 1, 1, H - 1)
    if not A.image_sinks(A.image_weights(vgen, 1), vgen.layout, "image"):
        got = np.ma.filled(heat[-1].get_array().astype(float), np.nan)
        assert np.allclose(got, A.paint(vgen.layout, w, "image", max_side=256), equal_nan=True)
    fig = token_image_view(vgen, 1, layer=0, head=2)
    assert [ax.get_title(loc="left") for ax in fig.axes if ax.get_images()] == ["layer 0, head 2"]
    fig = token_image_view(vgen, 1, head=2)  # --head alone: that head in every layer
    L = vgen.generation.num_layers
    assert [ax.get_title(loc="left") for ax in fig.axes if ax.get_images()] == (
        ["head 2, mean over layers"] + [f"L{l} H2" for l in range(L)])


def test_models_load_without_hub_kernels(tmp_path):
    """attnviz loads the model's own modules: never Hub kernels, which transformers fetches by default with the
    `kernels` package and a device map (on the GPU machine, --device-map auto failed offline because of them)."""
    from attnviz.models import LoadOptions, load_model, resolve_model

    seen = {}

    class Auto:
        @staticmethod
        def from_pretrained(location, **kwargs):
            seen.update(kwargs)
            raise OSError("stop here")

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(Exception):
        load_model(resolve_model(str(tmp_path)), Auto, LoadOptions(device_map="auto"))
    assert seen["use_kernels"] is False and seen["device_map"] == "auto"


@pytest.mark.parametrize("kind,chat", [("paligemma", False), ("llava_onevision", False), ("llava", True)])
def test_image_share_is_all_the_weight_on_image_tokens_even_at_key_0(vlm_models, kind, chat):
    """PaliGemma puts its image first (and OneVision without a chat template may): key 0 is then an image token, which
    counts with the image, never as the 'first token'; image_share is always the whole weight on the image tokens."""
    from attnviz.analysis import vlm as A
    from attnviz.vlm import attend_vlm_generation, load_vlm

    vgen = attend_vlm_generation(PROMPT, _photo(), load_vlm(str(vlm_models(kind))), chat=chat, max_new_tokens=3)
    s = A.shares(vgen)
    for i in range(3):
        assert s.image_share[i] == pytest.approx(A.image_weights(vgen, i).sum(), abs=1e-9)
    first_is_image = vgen.image_positions[0] == 0
    assert first_is_image == (kind == "paligemma" or vgen.generation.prompt.tokens[0] == "<image>")
    if first_is_image:
        assert np.all(s.group("first") == 0)
    else:
        assert np.all(s.group("first") > 0)
    if kind == "paligemma":
        assert first_is_image


@pytest.mark.parametrize("kind", VLM_KINDS)
def test_tile_grids_index_the_tokens_in_layout_order(vlm_models, kind):
    """The sink criterion's neighbours come from each tile's grid (``layout.paint`` of the token indices): the token
    at grid cell (r, c) is the one whose box is that cell (newline tokens left out), for every family's layout."""
    from attnviz.vlm import load_vlm, prepare_vlm_prompt

    vm = load_vlm(str(vlm_models(kind)))
    layout = prepare_vlm_prompt(vm, PROMPT, _photo(), chat=kind not in NO_CHAT).layout
    boxes = layout.token_boxes()
    for view in layout.views():
        for tile_cells in layout.paint(np.arange(layout.num_tokens), view):
            assert np.allclose(boxes[tile_cells.values.astype(int)], tile_cells.tile.cell_boxes())


def test_a_photo_too_thin_for_its_tiles_is_refused_in_one_line(vlm_models):
    from attnviz.errors import ModelError
    from attnviz.vlm import load_vlm, prepare_vlm_prompt

    vm = load_vlm(str(vlm_models("llava_next")))
    with pytest.raises(ModelError, match="too thin"):
        prepare_vlm_prompt(vm, PROMPT, _photo(2, 300), chat=True)


def test_chat_uses_the_tokenizers_template_when_the_processor_has_none(vlm_models, tmp_path):
    import shutil

    from attnviz.vlm import load_vlm, prompt_text

    want = prompt_text(load_vlm(str(vlm_models("llava"))), PROMPT, chat=True)
    copy = tmp_path / "llava"
    shutil.copytree(vlm_models("llava"), copy)
    template = (copy / "chat_template.jinja").read_text()
    (copy / "chat_template.jinja").unlink()  # the template moves into the tokenizer's config only
    doc = json.loads((copy / "tokenizer_config.json").read_text())
    doc["chat_template"] = template
    (copy / "tokenizer_config.json").write_text(json.dumps(doc))
    vm = load_vlm(str(copy))
    assert not vm.processor.chat_template and vm.text.tokenizer.chat_template
    assert prompt_text(vm, PROMPT, chat=True) == want


def test_an_id_past_the_tokenizers_vocabulary_is_labelled_by_its_id(vlm_models):
    from attnviz.generate import token_label
    from attnviz.vlm import load_vlm

    tok = load_vlm(str(vlm_models("qwen2_vl"))).text.tokenizer
    past = len(tok) + 3
    assert token_label(tok, past) == f"<id {past}>"
    assert token_label(tok, tok.convert_tokens_to_ids("<|im_end|>")) == "<|im_end|>"


def test_rows_that_do_not_line_up_with_the_tokens_are_refused(vlm_models, monkeypatch):
    """A step whose row has more keys than prompt + generated tokens (a model inserting tokens of its own, a cache
    filled twice) is refused in one line, never written into the wrong key positions."""
    from dataclasses import replace

    import attnviz.generate as G
    from attnviz.errors import ModelError
    from attnviz.vlm import attend_vlm_generation, load_vlm

    real = G.capture

    def one_key_too_many(model, inputs, plan, **kwargs):
        cap = real(model, inputs, plan, **kwargs)
        maps = cap.attention.get("self")
        if maps is not None and maps.rows is not None:
            cap.attention["self"] = replace(maps, rows=torch.cat([maps.rows[..., :1] * 0, maps.rows], -1))
        return cap

    monkeypatch.setattr(G, "capture", one_key_too_many)
    with pytest.raises(ModelError, match="do not line up"):
        attend_vlm_generation(PROMPT, _photo(), load_vlm(str(vlm_models("llava"))), chat=True, max_new_tokens=2)


@pytest.mark.parametrize("kind", ["qwen2_vl", "paligemma"])
def test_attnviz_check_proves_a_vlm_on_three_photos(vlm_models, kind):
    """attnviz check on a VLM: square, wide and tall photos, every generated row against one eager forward and the ids
    against plain greedy generate; exact, with the image tokens counted in each row's label."""
    from attnviz.pipelines.check import CheckRequest, run

    report = run(CheckRequest(str(vlm_models(kind))))
    doc = report.to_json()
    assert report.exact and report.exit_code == 0 and doc["modality"] == "vision-language" and doc["proven"]
    assert len(doc["checks"]) == 3 and all(c["max_abs_diff"] <= 1e-5 for c in doc["checks"])
    assert all("img)" in c["input"] and "ids≠generate" not in c["input"] for c in doc["checks"])
    assert all(c["queries"] == 6 and c["causal"] for c in doc["checks"])
