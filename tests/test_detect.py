"""attnviz detect: every saved tensor equals eager attention (or, for sampling locations, an independent
recomputation from the deformable module's inputs), boxes equal post_process_object_detection, feature-map cells
map to photo pixels on a non-square photo, and bad input gets one line and an exit code with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attnviz.cli import app
from cli_checks import load_saved, one_error_line
from attnviz.errors import ModelError
from detect_tiny import KINDS, make_detector

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # slow: the fast tier is pytest -m 'not slow'; one_thread: conftest

ROOT = Path(__file__).resolve().parent.parent
ROCKET = ROOT / "samples" / "rocket.jpg"  # 640x427, committed with its licence (samples/ATTRIBUTION.md)
TOL = 1e-5
runner = CliRunner()


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-detect")
    return lambda kind: make_detector(root, kind)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """The rocket photo (non-square); a synthetic 200x120 one should it be missing."""
    if ROCKET.exists():
        return ROCKET
    h, w = 120, 200
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, 255 * (((x - 140) ** 2 + (y - 50) ** 2) < 600)], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("photo") / "p.png"
    Image.fromarray(img).save(path)
    return path


def invoke(*args):
    return runner.invoke(app, ["detect", *[str(a) for a in args]])


def run_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)




def eager(folder, photo_path):
    """The model in eager attention, its processor's inputs and ``output_attentions=True`` outputs."""
    import transformers as T

    model = T.AutoModelForObjectDetection.from_pretrained(folder, attn_implementation="eager").eval()
    processor = T.AutoImageProcessor.from_pretrained(folder)
    image = Image.open(photo_path).convert("RGB")
    inputs = processor(images=image, return_tensors="pt")
    if model.config.model_type == "yolos":
        inputs.pop("pixel_mask", None)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    return model, processor, image, inputs, out


def stack(maps):
    return torch.stack([m[0] for m in maps]).float()


def close(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= TOL, diff


@pytest.mark.parametrize("kind", KINDS)
def test_saved_tensors_equal_eager(kind, detector, photo, tmp_path):
    folder = detector(kind)
    doc = run_json(photo, "-m", folder, "--threshold", "0", "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    saved, meta = load_saved(tmp_path / "a.safetensors")
    _, _, image, inputs, out = eager(folder, photo)
    assert json.loads(meta["feature_levels"]) == doc["feature_levels"]
    assert meta["model"] == doc["model"] and json.loads(meta["image"]) == [image.width, image.height]
    if kind == "yolos":
        q = doc["num_queries"]
        full = stack(out.attentions)
        close(saved["attentions"], full)
        rows, cols = doc["feature_levels"][0]["grid"]
        assert full.shape[-1] == 1 + rows * cols + q
        close(saved["cross_attentions"], full[:, :, -q:, 1:1 + rows * cols])
        close(saved["decoder_attentions"], full[:, :, -q:, -q:])
        assert doc["attention"] == "dense"
    elif kind in ("detr", "conditional_detr"):
        close(saved["encoder_attentions"], stack(out.encoder_attentions))
        close(saved["decoder_attentions"], stack(out.decoder_attentions))
        close(saved["cross_attentions"], stack(out.cross_attentions))
        rows, cols = doc["feature_levels"][0]["grid"]
        assert saved["cross_attentions"].shape[-1] == rows * cols
        assert doc["attention"] == "dense"
    else:
        assert doc["attention"] == "deformable"
        close(saved["cross_attention_weights"], stack(out.cross_attentions))
        close(saved["decoder_attentions"], stack(out.decoder_attentions))
        if kind == "deformable_detr":
            close(saved["encoder_attention_weights"], stack(out.encoder_attentions))
            levels = [tuple(lv["grid"]) for lv in doc["feature_levels"]]
            assert saved["encoder_attention_weights"].shape[1] == sum(r * c for r, c in levels)
        else:  # RT-DETR: the AIFI layer is dense self-attention over the coarsest level
            close(saved["encoder_attentions"], stack(out.encoder_attentions))
            r, c = doc["feature_levels"][-1]["grid"]
            assert saved["encoder_attentions"].shape[-1] == r * c
        w = saved["cross_attention_weights"]
        assert torch.allclose(w.sum((-1, -2)), torch.ones(w.shape[:-2]), atol=1e-5)  # softmax over levels x points
    # every figure's numbers are the saved ones
    for obj in doc["objects"]:
        layer, q = obj["layer"], obj["query"]
        if doc["attention"] == "dense":
            heads = np.asarray(obj["heads"])
            ref = saved["cross_attentions"][layer, :, q].numpy().reshape(heads.shape)
            np.testing.assert_allclose(heads, ref, atol=1e-6)
            np.testing.assert_allclose(obj["mean"], ref.mean(0), atol=1e-6)
        else:
            H = saved["cross_attention_weights"].shape[2]
            np.testing.assert_allclose(obj["weights"], saved["cross_attention_weights"][layer, q].reshape(H, -1).numpy(), atol=1e-6)


def _recompute_locations(model, inputs):
    """Sampling locations recomputed from each deformable module's own inputs: reference points plus
    ``sampling_offsets(hidden + position)`` normalised by the level's size (2-d references) or scaled by the
    reference box (4-d), as Zhu et al. 2021 eq. 3 / Zhao et al. 2024 define them. ``{"encoder"|"cross": [L, Q, H,
    levels, points, 2]}``."""
    found = {"encoder": [], "cross": [], "encoder_reference": [], "cross_reference": []}
    handles = []

    def hook_for(path):
        kind = "encoder" if ".encoder." in f".{path}." else "cross"

        def hook(mod, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            pos = kwargs.get("position_embeddings")
            ref = kwargs["reference_points"]
            shapes = kwargs["spatial_shapes"]
            q = hidden + pos if pos is not None else hidden
            off = mod.sampling_offsets(q).view(q.shape[0], q.shape[1], mod.n_heads, mod.n_levels, mod.n_points, 2)
            if ref.shape[-1] == 2:
                norm = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(off.dtype)  # (cols, rows) = (x, y)
                loc = ref[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
            else:
                loc = ref[:, :, None, :, None, :2] + off / mod.n_points * ref[:, :, None, :, None, 2:] * 0.5
            found[kind].append(loc[0].detach().float())
            found[f"{kind}_reference"].append(ref[0, :, 0, :2].detach().float())  # [Q, (x, y)] at the finest level

        return hook

    try:
        for path, module in model.named_modules():
            if hasattr(module, "sampling_offsets") and hasattr(module, "n_points"):
                handles.append(module.register_forward_pre_hook(hook_for(path), with_kwargs=True))
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.stack(v) for k, v in found.items() if v}


@pytest.mark.parametrize("kind", ["deformable_detr", "rt_detr"])
def test_sampling_locations_equal_a_recomputation(kind, detector, photo, tmp_path):
    folder = detector(kind)
    doc = run_json(photo, "-m", folder, "--threshold", "0", "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors",
                   "--point", "10,10")
    saved, _ = load_saved(tmp_path / "a.safetensors")
    model, _, _, inputs, _ = eager(folder, photo)
    recomputed = _recompute_locations(model, inputs)
    close(saved["cross_sampling_locations"], recomputed["cross"])
    # the star drawn on each object's figure is its query's reference point (normalised -> photo pixels)
    g = doc["geometry"]
    to_px = torch.tensor([g["input"][0] * g["photo"][0] / g["resized"][0], g["input"][1] * g["photo"][1] / g["resized"][1]])
    assert doc["objects"]
    for obj in doc["objects"]:
        want = recomputed["cross_reference"][obj["layer"]][obj["query"]] * to_px
        np.testing.assert_allclose(obj["reference"], want.tolist(), atol=1e-3)
    if kind == "deformable_detr":
        close(saved["encoder_sampling_locations"], recomputed["encoder"])
    else:
        assert "encoder_sampling_locations" not in saved


@pytest.mark.parametrize("kind", ["detr", "yolos", "rt_detr"])
def test_boxes_are_post_process_object_detection(kind, detector, photo, tmp_path):
    folder = detector(kind)
    model, processor, image, inputs, out = eager(folder, photo)
    sizes = torch.tensor([[image.height, image.width]])
    threshold = 0.2
    ref = processor.post_process_object_detection(out, threshold=threshold, target_sizes=sizes)[0]
    doc = run_json(photo, "-m", folder, "--threshold", threshold, "--out", tmp_path / "o")
    if len(ref["scores"]) == 0:
        pytest.skip("no box above the threshold for this random model")
    assert doc["found"] is True
    assert len(doc["detections"]) == len(ref["scores"])
    order = torch.argsort(ref["scores"], descending=True, stable=True)
    id2label = model.config.id2label
    for d, k in zip(doc["detections"], order.tolist()):
        np.testing.assert_allclose(d["box"], ref["boxes"][k].tolist(), atol=1e-2)
        assert d["score"] == pytest.approx(float(ref["scores"][k]), abs=1e-5)
        assert d["label"] == id2label[int(ref["labels"][k])]
        # the query named is the one whose predicted box this is (cx, cy, w, h normalised -> photo pixels)
        cx, cy, bw, bh = out.pred_boxes[0, d["query"]].tolist()
        w, h = image.size
        np.testing.assert_allclose(d["box"], [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], atol=1e-2)
    assert [o["index"] for o in doc["objects"]] == [d["index"] for d in doc["detections"]][:10]  # --max-objects 10


def test_nothing_above_the_threshold_shows_the_top_queries(detector, photo, tmp_path):
    result = invoke(photo, "-m", detector("detr"), "--threshold", "1", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "no detection scored 1 or more; showing the 3 top-scoring queries" in result.stderr
    doc = run_json(photo, "-m", detector("detr"), "--threshold", "1", "--out", tmp_path / "o2")
    assert doc["found"] is False and len(doc["detections"]) == 3
    assert all(d["below_threshold"] for d in doc["detections"])
    scores = [d["score"] for d in doc["detections"]]
    assert scores == sorted(scores, reverse=True) and max(scores) < 1
    assert sorted(p.name for p in (tmp_path / "o2").glob("*.png")) == ["detections.png", "object-0.png", "object-1.png", "object-2.png"]


def test_geometry_maps_cells_to_photo_pixels_on_a_padded_non_square_photo(detector, tmp_path):
    """A 200x120 photo resized to 64 high (106 wide) and padded to 128x96: cells span the padded input, the
    padding lies beyond the photo, and a pixel maps to the cell that covers it."""
    import transformers as T

    from attnviz.inputs.detection import Geometry, load_detector, preprocess

    folder = tmp_path / "padded"
    config, _ = __import__("detect_tiny").build("detr")
    T.AutoModelForObjectDetection.from_config(config).save_pretrained(folder)
    T.DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, pad_size={"height": 96, "width": 128}).save_pretrained(folder)
    det = load_detector(str(folder))
    photo = Image.new("RGB", (200, 120), (10, 20, 30))
    inputs, geo = preprocess(det, photo)
    assert geo.photo == (200, 120)
    assert geo.input == (128, 96) and tuple(inputs["pixel_values"].shape[-2:]) == (96, 128)
    assert geo.resized == (106, 64)  # round(64 * 200 / 120) = 107 in theory; the processor's own int() gives 106
    sx, sy = geo.scale
    assert sx == pytest.approx(200 / 106) and sy == pytest.approx(120 / 64)
    left, top, right, bottom = geo.extent
    assert right == pytest.approx(128 * 200 / 106) and bottom == pytest.approx(96 * 120 / 64)
    assert right > 200 and bottom > 120  # the padding lies outside the photo
    grid = (3, 4)  # stride 32 on 96x128
    assert geo.cell_box(grid, 0, 0) == pytest.approx((0, 0, right / 4, bottom / 3))
    # photo pixel (199, 119), the last one, is in input pixel (105.4, 63.5) -> cell (1, 3) of a stride-32 map
    assert geo.cell_at(grid, 199, 119) == (1, 3)
    assert geo.cell_at(grid, 0, 0) == (0, 0)
    with pytest.raises(Exception, match="outside the photo"):
        geo.cell_at(grid, 200, 10)
    assert geo.to_photo(np.array([[1.0, 1.0]])).tolist() == [[pytest.approx(right), pytest.approx(bottom)]]
    # no padding: the extent is the photo
    g2 = Geometry((640, 427), (95, 64), (95, 64))
    assert g2.extent == pytest.approx((0, 0, 640, 427))


def test_figures_stop_at_the_photo_edges(detector, photo, tmp_path):
    from attnviz.inputs.detection import Geometry
    from attnviz.render.detect import dense_view

    pixels = np.zeros((120, 200, 3), np.uint8)
    geo = Geometry((200, 120), (106, 64), (128, 96))
    maps = np.random.default_rng(0).random((3, 3, 4))
    fig = dense_view(pixels, maps, geo.extent, names=["head 0", "head 1", "mean"], title="t", subtitle="s")
    for ax in fig.axes[:3]:
        assert ax.get_xlim() == (0, 200) and ax.get_ylim() == (120, 0)
        im = [a for a in ax.get_images()][-1]
        assert im.get_extent() == pytest.approx([0, geo.extent[2], geo.extent[3], 0])


def test_point_view_is_the_encoder_row_of_the_cell_under_the_pixel(detector, photo, tmp_path):
    doc = run_json(photo, "-m", detector("detr"), "--point", "5,5", "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    saved, _ = load_saved(tmp_path / "a.safetensors")
    p = doc["point"]
    assert p["cell"] == [0, 0]
    rows, cols = p["grid"]
    enc = saved["encoder_attentions"][p["layer"]]
    np.testing.assert_allclose(p["heads"], enc[:, 0].reshape(-1, rows, cols).numpy(), atol=1e-6)
    assert (tmp_path / "o" / "point-5-5.png").exists()


def test_object_and_layer_select_one_view(detector, photo, tmp_path):
    doc = run_json(photo, "-m", detector("deformable_detr"), "--threshold", "0", "--object", "1", "--layer", "0",
                   "--out", tmp_path / "o", "--format", "png,svg")
    assert [o["index"] for o in doc["objects"]] == [1]
    obj = doc["objects"][0]
    assert obj["layer"] == 0 and len(obj["points"]) == 2 and len(obj["points"][0]) == 3 * 2  # heads x (levels * points)
    assert obj["levels"] == [0, 0, 1, 1, 2, 2]
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")) == [
        "detections.png", "detections.svg", "object-1.png", "object-1.svg"]
    assert doc["feature_levels"][0]["stride"] == 8


def test_human_output_has_the_table(detector, photo, tmp_path):
    result = invoke(photo, "-m", detector("rt_detr"), "--threshold", "0", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "deformable attention" in out and "5 object queries" in out
    assert "tightest head" in out and "px spread" in out
    assert str(tmp_path / "o" / "detections.png") in out




def test_bad_input_is_one_line_and_writes_nothing(detector, photo, tmp_path):
    from tiny import make_text_model

    out = tmp_path / "o"
    folder = detector("detr")
    line = one_error_line(invoke(photo, "-m", folder, "--threshold", "0", "--object", "99", "--out", out), 2)
    assert "--object 99 is out of range: there are 5 detections (0..4)" in line
    line = one_error_line(invoke(photo, "-m", folder, "--point", "5000,5", "--out", out), 2)
    assert "is outside the photo" in line
    line = one_error_line(invoke(photo, "-m", folder, "--point", "a,b", "--out", out), 2)
    assert "--point must be X,Y" in line
    line = one_error_line(invoke(photo, "-m", folder, "--threshold", "1.5", "--out", out), 2)
    assert "--threshold must be between 0 and 1" in line
    line = one_error_line(invoke(photo, "-m", folder, "--layer", "7", "--out", out), 2)
    assert "--layer 7 is out of range: the decoder has 2 layers" in line
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    one_error_line(invoke(bad, "-m", folder, "--out", out), 4)
    one_error_line(invoke(tmp_path / "missing.jpg", "-m", folder, "--out", out), 4)
    text = make_text_model(tmp_path / "text", "bert")
    line = one_error_line(invoke(photo, "-m", text, "--out", out), 3)
    assert "attnviz text" in line
    assert not out.exists()


def test_base_model_without_a_head_shows_attention_without_boxes(photo, tmp_path):
    import transformers as T

    config, processor = __import__("detect_tiny").build("detr")
    config.architectures = ["DetrModel"]
    folder = tmp_path / "base"
    T.DetrModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    doc = run_json(photo, "-m", folder, "--point", "5,5", "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    assert doc["detections"] == [] and doc["objects"] == []
    assert doc["point"]["cell"] == [0, 0]
    saved, _ = load_saved(tmp_path / "a.safetensors")
    assert set(saved) == {"encoder_attentions", "decoder_attentions", "cross_attentions"}


@pytest.mark.parametrize("kind", ["dab-detr", "table-transformer"])
def test_unproven_detectors_are_checked_against_eager_on_the_photo(kind, detector, photo, tmp_path):
    doc = run_json(photo, "-m", detector(kind), "--threshold", "0", "--out", tmp_path / "o", "--save-attn", tmp_path / "a.safetensors")
    assert doc["verified"] is True and doc["verification"]["status"] == "verified"
    assert set(doc["verification"]["max_abs_diff"]) == {"encoder_attentions", "decoder_attentions", "cross_attentions"}
    assert max(doc["verification"]["max_abs_diff"].values()) <= TOL
    saved, _ = load_saved(tmp_path / "a.safetensors")
    _, _, _, _, out = eager(detector(kind), photo)
    close(saved["cross_attentions"], stack(out.cross_attentions))
    skipped = run_json(photo, "-m", detector(kind), "--no-verify", "--out", tmp_path / "o2")
    assert skipped["verified"] is False and skipped["verification"]["status"] == "skipped"


def test_rt_detr_v2_is_refused_in_one_line(detector, photo, tmp_path):
    line = one_error_line(invoke(photo, "-m", detector("rt_detr_v2"), "--out", tmp_path / "o"), 3)
    assert "(rt_detr_v2) is a detector attnviz detect cannot show yet" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["detr", "deformable_detr", "yolos"])
def test_check_learns_detectors(kind, detector):
    from attnviz.pipelines.check import CheckRequest, run

    report = run(CheckRequest(str(detector(kind))))
    assert report.exact and report.exit_code == 0 and report.modality.startswith("detection")
    kinds = {r.kind for r in report.rows}
    expected = {"detr": {"encoder", "decoder", "cross"}, "yolos": {"self"},
                "deformable_detr": {"encoder weights", "decoder", "cross weights"}}[kind]
    assert kinds == expected
    assert {r.input for r in report.rows} == {"256×256", "320×200"}
    assert all(r.max_abs_diff <= TOL for r in report.rows)


def _page_data(path):
    import re

    text = Path(path).read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="attnviz-data">(.*?)</script>', text, re.S)
    return text, json.loads(m.group(1))


def test_html_report_holds_the_boxes_and_each_objects_figure(detector, photo, tmp_path):
    doc = run_json(photo, "-m", detector("deformable_detr"), "--threshold", "0", "--point", "20,20", "--format", "html",
                   "--out", tmp_path / "o")
    assert [Path(p).name for p in doc["files"]] == ["report.html"]
    text, data = _page_data(tmp_path / "o" / "report.html")
    assert "default-src 'none'" in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert data["type"] == "detect" and data["attention"] == "deformable"
    assert data["detections"] == doc["detections"]
    assert len(doc["detections"]) == 15 and [o["index"] for o in data["objects"]] == list(range(10))
    assert "drew the figures of the 10 top-scoring of 15 detections" in " ".join(data["notes"])
    for o, full in zip(data["objects"], doc["objects"]):
        assert o["figure"].startswith("data:image/png;base64,")
        assert o["tightest_head"] == full["tightest_head"] and o["spread_px"] == full["spread_px"]
    assert data["point"]["cell"] == doc["point"]["cell"] and data["point"]["figure"].startswith("data:image/png")
    assert data["photo"].startswith("data:image/jpeg;base64,") and data["photo_size"] == doc["geometry"]["photo"]


def test_html_report_click_shows_that_object(detector, photo, tmp_path):
    from browser import start, why_no_browser

    reason = why_no_browser()
    if reason:
        pytest.skip(reason)
    run_json(photo, "-m", detector("detr"), "--threshold", "0", "--format", "html", "--out", tmp_path / "o")
    _, data = _page_data(tmp_path / "o" / "report.html")
    driver = start()
    try:
        driver.get((tmp_path / "o" / "report.html").as_uri())
        assert driver.execute_script("return window.attnviz.state()")["selected"] == 0
        assert len(driver.find_elements("css selector", "rect.box")) == len(data["detections"])
        driver.execute_script("document.querySelector('rect.box[data-index=\"2\"]')"
                              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
        assert driver.execute_script("return window.attnviz.state()")["selected"] == 2
        img = driver.find_element("css selector", "#figure img")
        assert img.get_attribute("data-index") == "2" and img.get_attribute("src") == data["objects"][2]["figure"]
        assert "object 2:" in driver.find_element("id", "caption").text
        assert driver.find_element("css selector", "tr.on").get_attribute("data-index") == "2"
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


def test_a_file_in_the_way_is_not_overwritten(detector, photo, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "object-1.png").write_bytes(b"mine")
    line = one_error_line(invoke(photo, "-m", detector("detr"), "--threshold", "0", "--object", "1", "--out", out), 5)
    assert "object-1.png" in line
    assert (out / "object-1.png").read_bytes() == b"mine"
    assert sorted(p.name for p in out.iterdir()) == ["object-1.png"]


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from attnviz.cli import app\n"
        "r = CliRunner().invoke(app, ['detect', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert '--threshold' in r.output and '--object' in r.output and '--point' in r.output\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


@pytest.mark.parametrize("kind", ["detr", "yolos", "rt_detr"])
def test_point_without_save_attn_keeps_only_the_last_encoder_layer_and_the_same_numbers(kind, detector, photo, tmp_path):
    """Without --save-attn only the last encoder layer is kept (the maps that grow as S²); its numbers are the
    same as those of the run that keeps every layer."""
    lean = run_json(photo, "-m", detector(kind), "--point", "30,40", "--out", tmp_path / "a")
    full = run_json(photo, "-m", detector(kind), "--point", "30,40", "--out", tmp_path / "b", "--save-attn", tmp_path / "s.safetensors")
    assert lean["point"] == full["point"]
    saved, _ = load_saved(tmp_path / "s.safetensors")
    name = "attentions" if kind == "yolos" else "encoder_attentions"
    assert lean["point"]["layer"] == saved[name].shape[0] - 1


def test_max_objects_bounds_the_figures_and_says_so(detector, photo, tmp_path):
    result = invoke(photo, "-m", detector("deformable_detr"), "--threshold", "0", "--max-objects", "2", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "drew the figures of the 2 top-scoring of 15 detections (--max-objects N, 0 for all" in result.stderr
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["detections.png", "object-0.png", "object-1.png"]
    doc = run_json(photo, "-m", detector("deformable_detr"), "--threshold", "0", "--max-objects", "0", "--out", tmp_path / "all")
    assert len(doc["objects"]) == len(doc["detections"]) == 15
    one = run_json(photo, "-m", detector("deformable_detr"), "--threshold", "0", "--max-objects", "2", "--object", "12", "--out", tmp_path / "one")
    assert [o["index"] for o in one["objects"]] == [12]
    line = one_error_line(invoke(photo, "-m", detector("deformable_detr"), "--max-objects", "-1", "--out", tmp_path / "x"), 2)
    assert "--max-objects must be 0" in line


@pytest.mark.parametrize("kind", ["detr", "deformable_detr"])
def test_weights_holding_nan_are_refused_naming_the_tensor(kind, photo, tmp_path):
    """The NaN/infinity screen runs after the forward pass (it then costs no extra memory) but before anything is
    written, and names the tensor even though the capture met non-finite attention first."""
    import transformers as T

    config, processor = __import__("detect_tiny").build(kind)
    torch.manual_seed(0)
    model = T.AutoModelForObjectDetection.from_config(config).eval()
    with torch.no_grad():
        model.model.decoder.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    folder = tmp_path / "nan"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    line = one_error_line(invoke(photo, "-m", folder, "--out", tmp_path / "o"), 3)
    assert "decoder.layers.0.self_attn.q_proj.weight holds NaN values" in line
    assert not (tmp_path / "o").exists()


def test_a_timm_backbone_without_timm_is_one_line(detector, photo, tmp_path):
    """facebook/detr-resnet-50's config asks for a timm backbone (use_timm_backbone): without timm installed the
    load fails in one line naming it (exit 3), not with a traceback."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here")
    folder = tmp_path / "timm-detr"
    shutil.copytree(detector("detr"), folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(use_timm_backbone=True, backbone="resnet50", backbone_config=None, use_pretrained_backbone=False)
    (folder / "config.json").write_text(json.dumps(config))
    line = one_error_line(invoke(photo, "-m", folder, "--out", tmp_path / "o"), 3)
    assert "timm" in line


@pytest.mark.parametrize("kind", ["detr", "rt_detr"])
def test_bfloat16_runs_and_matches_boxes_to_queries(kind, detector, photo, tmp_path):
    """Half precision: boxes are post-processed from the outputs widened to float32, so each still matches its query."""
    doc = run_json(photo, "-m", detector(kind), "--dtype", "bfloat16", "--threshold", "0", "--out", tmp_path / "o")
    assert doc["detections"] and all(0 <= d["query"] < doc["num_queries"] for d in doc["detections"])
    assert (tmp_path / "o" / "object-0.png").exists()


def test_maps_that_are_not_maps_of_the_photo_are_refused():
    """A capture whose shapes do not fit the queries and feature map, or whose rows are not probabilities, is refused
    before anything is drawn or saved (attnviz.inputs.detection._check_maps)."""
    from types import SimpleNamespace

    from attnviz.inputs.detection import DENSE, DEFORMABLE, DeformableCalls, DetectionAttention, _check_maps

    det = SimpleNamespace(model=torch.nn.Linear(1, 1), num_queries=5)
    probs = lambda *shape: torch.full(shape, 1.0 / shape[-1])  # noqa: E731
    good = DetectionAttention(DENSE, [(2, 3)], (2, 3), probs(1, 2, 6, 6), probs(2, 2, 5, 5), probs(2, 2, 5, 6), None, None, "x")
    _check_maps(det, good)
    band = DetectionAttention(DENSE, [(2, 3)], (2, 3), probs(1, 2, 6, 3), probs(2, 2, 5, 5), probs(2, 2, 5, 6), None, None, "x")
    with pytest.raises(ModelError, match=r"encoder attention is \[6, 3\] per head, not the \[6, 6\] map"):
        _check_maps(det, band)
    halved = DetectionAttention(DENSE, [(2, 3)], (2, 3), None, probs(2, 2, 5, 5), probs(2, 2, 5, 6) / 2, None, None, "x")
    with pytest.raises(ModelError, match="cross attention rows sum to 1 within 0.5 only"):
        _check_maps(det, halved)
    calls = DeformableCalls({"cross": [torch.full((5, 2, 3, 2), 1 / 6)]}, {"cross": [torch.zeros(5, 2, 3, 2, 2)]},
                            {"cross": [(8, 12), (4, 6), (2, 3)]})
    _check_maps(det, DetectionAttention(DEFORMABLE, [(8, 12), (4, 6), (2, 3)], None, None, None, None, calls, None, "x"))
    calls.weights["cross"][0] = calls.weights["cross"][0] * 2
    with pytest.raises(ModelError, match="deformable cross weights sum to 1 within 1 only"):
        _check_maps(det, DetectionAttention(DEFORMABLE, [(8, 12), (4, 6), (2, 3)], None, None, None, None, calls, None, "x"))
