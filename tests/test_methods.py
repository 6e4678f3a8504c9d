"""Methods beyond raw attention: grad-attention, relevance (Chefer et al. 2021), value-norm (Kobayashi et al. 2020),
each against an independent implementation, and ``attnviz faithfulness``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnviz.cli import app
from cli_checks import load_saved, one_error_line
from vision_tiny import DEIT, SAMPLES, build, make_photo, make_vision_model, needs_deit

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

runner = CliRunner()


# ---------------------------------------------------------------------------
# independent references: autograd through transformers' own eager attention; explicit per-head products


def eager_grads(model, inputs, target):
    """Per layer ``(A [H, N, N], dy/dA [H, N, N])`` by autograd through eager ``output_attentions`` (retain_grad)."""
    from attnviz.signals import target_value

    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.enable_grad():
            out = model(**inputs, output_attentions=True)
            attentions = out.attentions
            for a in attentions:
                a.retain_grad()
            target_value(out, target).backward()
        model.zero_grad(set_to_none=True)
        return out, [(a.detach()[0], a.grad[0]) for a in attentions]
    finally:
        model.set_attn_implementation(previous)


def chefer_reference(pairs):
    """The authors' reference algorithm (Transformer-MM-Explainability, ViT): avg_heads = (grad * cam).clamp(min=0)
    .mean(0); R = eye; for each block R += matmul(cam, R)."""
    n = pairs[0][0].shape[-1]
    R = torch.eye(n, n)
    for cam, grad in pairs:
        cam = (grad * cam).clamp(min=0).mean(dim=0)
        R += torch.matmul(cam, R)
    return R


def explicit_value_norm(model, inputs, value_module, out_module, layout):
    """Per layer ``mean_h ||alpha_ij f_h(x_j)||`` from eager probabilities, the value projection's output and the output
    projection's weight, head by head and key by key (no batched products)."""
    values = []
    handles = [m.register_forward_hook(lambda mod, a, o: values.append(o.detach()[0])) for m in value_module]
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
        for h in handles:
            h.remove()
    maps = []
    torch.set_grad_enabled(False)
    for layer, attn in enumerate(out.attentions):
        a = attn[0]  # [H, N, N]
        heads, n, _ = a.shape
        v = values[layer]
        if layout == "gpt2":
            v = v[:, 2 * v.shape[-1] // 3:]  # c_attn output is [q | k | v]
        kv_heads = v.shape[-1] // (model.config.hidden_size // heads)
        d = v.shape[-1] // kv_heads
        w = out_module[layer].weight
        total = torch.zeros(n, n)
        for h in range(heads):
            g = h // (heads // kv_heads)
            w_h = w[h * d:(h + 1) * d, :] if layout == "gpt2" else w[:, h * d:(h + 1) * d].t()  # [d, D]
            for j in range(n):
                f = v[j, g * d:(g + 1) * d] @ w_h  # f_h(x_j) [D]
                for i in range(n):
                    total[i, j] += torch.linalg.vector_norm(a[h, i, j] * f)
        maps.append(total / heads)
    torch.set_grad_enabled(True)
    return maps


def _text_model(kind: str):
    import transformers as tf

    torch.manual_seed(0)
    if kind == "bert":
        cfg = tf.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                            num_labels=3, initializer_range=0.5)
        return tf.BertForSequenceClassification(cfg)
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, initializer_range=0.5,
                                                bos_token_id=0, eos_token_id=0))
    cfg = tf.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=40, initializer_range=0.5)
    return tf.LlamaForCausalLM(cfg)


def _case(kind):
    """(model, inputs, value modules, output projections, layout) of a tiny model."""
    if kind in ("vit", "deit-distilled"):
        model = build(kind)[0].eval()
        torch.manual_seed(1)
        inputs = {"pixel_values": torch.randn(1, 3, 32, 32)}
        layers = model.vit.layers if kind == "vit" else model.deit.layers
        return model, inputs, [l.attention.v_proj for l in layers], [l.attention.o_proj for l in layers], "linear"
    model = _text_model(kind).eval()
    inputs = {"input_ids": torch.tensor([[1, 5, 7, 9, 11, 2, 8]])}
    if kind == "bert":
        inputs["attention_mask"] = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])  # a padded key: probability 0, never shown
        layers = model.bert.encoder.layer
        return model, inputs, [l.attention.self.value for l in layers], [l.attention.output.dense for l in layers], "linear"
    if kind == "gpt2":
        layers = model.transformer.h
        return model, inputs, [l.attn.c_attn for l in layers], [l.attn.c_proj for l in layers], "gpt2"
    layers = model.model.layers
    return model, inputs, [l.self_attn.v_proj for l in layers], [l.self_attn.o_proj for l in layers], "linear"


@pytest.mark.parametrize("kind", ["vit", "deit-distilled", "bert", "gpt2", "llama"])
def test_signals_equal_autograd_through_eager_and_explicit_value_norms(kind, one_thread):
    from attnviz.methods.gradients import grad_weighted
    from attnviz.signals import Target, capture_signals, class_target

    model, inputs, value_modules, out_modules, layout = _case(kind)
    with torch.no_grad():
        reference = model(**inputs).logits
    target = class_target(reference, None, model.config.id2label) if reference.dim() == 2 else Target("token", 7, "t7", position=3)
    sig = capture_signals(model, inputs, target, gradients=True, values=True, reference=reference)
    _, pairs = eager_grads(model, inputs, target)
    assert len(sig.grad_weighted) == len(pairs) == model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else True
    for (a, g), mine in zip(pairs, sig.grad_weighted):
        expected = (g * a).clamp(min=0).mean(dim=0)
        assert float((mine - expected).abs().max()) <= 1e-5
        assert float(expected.abs().max()) > 1e-4  # the gradients are not all zero: the comparison means something
        assert grad_weighted(a, g).shape == mine.shape
    explicit = explicit_value_norm(model, inputs, value_modules, out_modules, layout)
    for mine, ref in zip(sig.value_weighted, explicit):
        assert float((mine - ref).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))
    if kind == "bert":
        assert float(sig.value_weighted[0][:, -1].abs().max()) == 0.0  # the padded key gets nothing
    assert sig.checks["logits"] <= 1e-5 * max(1.0, float(reference.abs().max()))
    assert sig.checks["projection_input"] <= 1e-5
    assert sig.forward_passes == 1 and sig.backward_passes == 1 and sig.target == target
    # a layer that did not come through the gradient pass is refused, never left out of relevance in silence
    from attnviz.errors import ModelError

    expected = {"self": len(pairs) + 1}
    with pytest.raises(ModelError, match=f"self: {len(pairs)} of {len(pairs) + 1}"):
        capture_signals(model, inputs, target, gradients=True, layers=expected)
    # the model is left as it was: its attention implementation and its parameters' requires_grad
    assert model.config._attn_implementation != "attnviz-grad"
    assert all(p.requires_grad for p in model.parameters())


def test_the_registry_lists_the_methods_with_their_sources():
    from attnviz import methods
    from attnviz.signals import Target

    # a target's one-line description never breaks the line (a newline token is written escaped); JSON keeps the label
    t = Target("token", 5, "\n", position=3)
    assert t.describe() == "token '\\n' (log-probability, predicted at position 3)" and t.to_dict()["label"] == "\n"

    names = methods.names()
    for name in ("attention", "rollout", "grad-attention", "relevance", "value-norm"):
        assert name in names
    assert "Chefer" in methods.get("relevance").source and methods.get("relevance").reads == "grad-weighted"
    assert "Kobayashi" in methods.get("value-norm").source and methods.get("value-norm").reads == "value-weighted"
    r = methods.get("relevance")([torch.full((3, 3), 0.1), torch.eye(3) * 0.5])
    a1, a2 = torch.full((3, 3), 0.1), torch.eye(3) * 0.5
    R = torch.eye(3)
    R = R + a1 @ R
    R = R + a2 @ R
    assert torch.allclose(r.values, R)


@pytest.mark.parametrize("kind", ["vit", "deit-distilled"])
def test_relevance_equals_the_reference_algorithm_on_tiny_vits(kind, tmp_path, one_thread):
    """explain_image's relevance = Chefer et al.'s published algorithm on the same weights (autograd through eager)."""
    from attnviz.analysis.explain import explain_image
    from attnviz.analysis.patches import image_plan
    from attnviz.inputs.patches import attend_image, load_image_model, preprocess
    from attnviz.signals import class_target

    folder = make_vision_model(tmp_path, kind)
    photo = make_photo(tmp_path / "p.png")
    im = load_image_model(str(folder))
    result = attend_image(photo, im, plan=image_plan(im, (-1,)))
    e = explain_image(im, result, ("relevance", "grad-attention", "value-norm"), target_class=None)
    pixel_values = preprocess(im, result.image)[0]
    with torch.no_grad():
        logits = im.model(pixel_values=pixel_values).logits
    target = class_target(logits, None, im.model.config.id2label)
    assert e.target == target
    _, pairs = eager_grads(im.model, {"pixel_values": pixel_values}, target)
    R = chefer_reference(pairs)
    prefix, (rows, cols) = result.prefix_tokens, result.grid
    expected = R[result.cls_index, prefix:].reshape(rows, cols)
    assert torch.allclose(e.get("relevance").values, expected, atol=1e-5, rtol=0)
    a, g = pairs[-1]
    expected = (g * a).clamp(min=0).mean(0)[result.cls_index, prefix:].reshape(rows, cols)
    assert torch.allclose(e.get("grad-attention").values, expected, atol=1e-5, rtol=0)
    assert e.get("grad-attention").layer == len(pairs) - 1 and e.get("relevance").layer is None


@needs_deit
def test_relevance_on_the_real_deit_tiny_equals_the_reference(one_thread):
    from attnviz.analysis.explain import explain_image
    from attnviz.analysis.patches import image_plan
    from attnviz.inputs.patches import attend_image, load_image_model, preprocess

    im = load_image_model(str(DEIT))
    result = attend_image(SAMPLES / "chelsea.png", im, plan=image_plan(im, (-1,)))
    e = explain_image(im, result, ("relevance",))
    assert e.target.label == "Egyptian cat"
    pixel_values = preprocess(im, result.image)[0]
    _, pairs = eager_grads(im.model, {"pixel_values": pixel_values}, e.target)
    R = chefer_reference(pairs)
    expected = R[result.cls_index, result.prefix_tokens:].reshape(result.grid)
    scale = float(expected.abs().max())
    assert float((e.get("relevance").values - expected).abs().max()) <= 1e-5 * max(1.0, scale)
    # grad-attention and value-norm of the last layer: autograd through eager, and explicit per-head products
    e = explain_image(im, result, ("grad-attention", "value-norm"))
    cls, prefix = result.cls_index, result.prefix_tokens
    a, g = pairs[-1]
    expected = (g * a).clamp(min=0).mean(0)[cls, prefix:].reshape(result.grid)
    assert torch.allclose(e.get("grad-attention").values, expected, atol=1e-5 * float(expected.abs().max()), rtol=0)
    attn = im.model.base_model.layers[-1].attention
    values = []
    hook = attn.v_proj.register_forward_hook(lambda m, args, out: values.append(out.detach()[0]))
    try:
        with torch.no_grad():
            im.model(pixel_values=pixel_values)
    finally:
        hook.remove()
    v, heads = values[0], a.shape[0]
    d = v.shape[-1] // heads
    explicit = torch.zeros(a.shape[-1])
    with torch.no_grad():
        for h in range(heads):
            f = v[:, h * d:(h + 1) * d] @ attn.o_proj.weight[:, h * d:(h + 1) * d].t()  # f_h(x_j) [T, D]
            explicit += a[h, cls] * torch.linalg.vector_norm(f, dim=-1)
    explicit = (explicit / heads)[prefix:].reshape(result.grid)
    assert torch.allclose(e.get("value-norm").values, explicit, atol=1e-5 * float(explicit.abs().max()), rtol=0)


# ---------------------------------------------------------------------------
# attnviz image --method


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods-vit")
    return make_vision_model(root, "vit"), make_photo(root / "photo.png")


def test_image_method_json_contract_views_and_saved_maps(vit_folder, tmp_path, one_thread):
    from attnviz.analysis.explain import explain_image
    from attnviz.analysis.patches import image_plan
    from attnviz.inputs.patches import attend_image, load_image_model

    folder, photo = vit_folder
    out = tmp_path / "o"
    result = runner.invoke(app, ["image", str(photo), "-m", str(folder), "-o", str(out), "--method", "relevance,grad-attention,value-norm",
                                 "--target-class", "2", "--save-attn", str(tmp_path / "a.safetensors"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["method"] == "relevance"
    assert doc["target"] == {"kind": "class", "index": 2, "label": "blue", "quantity": "logit"}
    rows, cols = doc["grid"]
    assert np.asarray(doc["method_map"]).shape == (rows, cols)
    assert [m["name"] for m in doc["methods"]] == ["relevance", "grad-attention", "value-norm"]
    assert doc["methods"][1]["layer"] == 1 and doc["methods"][0]["layer"] is None
    assert doc["method_checks"]["max_abs_diff"]["logits"] <= 1e-4
    im = load_image_model(str(folder))
    r = attend_image(photo, im, plan=image_plan(im, (-1,)))
    e = explain_image(im, r, ("relevance", "grad-attention", "value-norm"), target_class=2)
    for entry in doc["methods"]:
        assert np.allclose(entry["map"], e.get(entry["name"]).values.numpy(), atol=1e-7)
    names = {Path(f).name for f in doc["files"]}
    assert {"method-relevance.png", "method-grad-attention.png", "method-value-norm.png", "methods.png"} <= names
    tensors, meta = load_saved(tmp_path / "a.safetensors")
    assert torch.allclose(tensors["method/relevance"], e.get("relevance").values)
    assert json.loads(meta["methods"]) == ["relevance", "grad-attention", "value-norm"]
    # another class, another map: the target is what the gradients follow
    other = explain_image(im, r, ("relevance",), target_class=0)
    assert not torch.allclose(other.get("relevance").values, e.get("relevance").values)
    human = runner.invoke(app, ["image", str(photo), "-m", str(folder), "-o", str(tmp_path / "h"), "--method", "relevance"])
    assert human.exit_code == 0, human.output
    assert "methods: relevance · target: class" in human.stdout and "matches the model's logits" in human.stdout


def test_image_method_refusals(vit_folder, tmp_path):
    folder, photo = vit_folder
    base = ["image", str(photo), "-m", str(folder), "-o", str(tmp_path / "o")]
    line = one_error_line(runner.invoke(app, base + ["--method", "saliency"]), 2)
    assert "unknown method 'saliency'" in line and "relevance" in line
    line = one_error_line(runner.invoke(app, base + ["--target-class", "1"]), 2)
    assert "--method relevance" in line
    line = one_error_line(runner.invoke(app, base + ["--method", "relevance", "--target-class", "9"]), 2)
    assert "out of range" in line and "5 classes" in line
    dino = make_vision_model(tmp_path, "dinov2")
    line = one_error_line(runner.invoke(app, ["image", str(photo), "-m", str(dino), "-o", str(tmp_path / "d"),
                                              "--method", "relevance"]), 2)
    assert "no classification head" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()
    # value-norm needs no class: a model without a head is served
    result = runner.invoke(app, ["image", str(photo), "-m", str(dino), "-o", str(tmp_path / "d2"), "--method", "value-norm", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] is None


# ---------------------------------------------------------------------------
# a model whose decision depends on one known patch


def one_patch_model(root: Path) -> tuple[Path, int]:
    """A 1-layer ViT (4x4 patches of 8 px) built by hand: q and k are zero (uniform attention), layer norms are made
    (nearly) linear by a huge epsilon, the patch embedding reads a patch's red channel, the MLP is off and the
    classifier reads the [CLS] token. Only a red patch moves the logit of class 1; black patches give exactly 0.
    Returns the folder and the index of the red patch in a photo from :func:`one_patch_photo`."""
    import transformers as tf

    cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                       intermediate_size=8, num_labels=2, layer_norm_eps=1e6, id2label={0: "dark", 1: "red"},
                       label2id={"dark": 0, "red": 1})
    model = tf.ViTForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.vit.embeddings
        emb.patch_embeddings.projection.weight[0, 0] = 100.0 / 64  # red channel mean -> dimension 0
        emb.patch_embeddings.projection.bias[0] = 100.0  # a black pixel is -1 after normalisation: black -> 0
        layer = model.vit.layers[0]
        for ln in (layer.layernorm_before, layer.layernorm_after, model.vit.layernorm):
            ln.weight.fill_(1000.0)
        layer.attention.v_proj.weight.copy_(torch.eye(8))
        layer.attention.o_proj.weight.copy_(torch.eye(8))
        model.classifier.weight[1, 0] = 1.0
    folder = root / "one-patch"
    model.save_pretrained(folder)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, 2 * 4 + 1


def one_patch_photo(path: Path) -> Path:
    from PIL import Image

    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[16:24, 8:16, 0] = 255  # patch (row 2, col 1)
    Image.fromarray(img).save(path)
    return path


def test_a_decision_that_depends_on_one_patch_ranks_it_first(tmp_path, one_thread):
    from attnviz.analysis.explain import explain_image
    from attnviz.analysis.faithfulness import ranking
    from attnviz.analysis.patches import image_plan
    from attnviz.inputs.patches import attend_image, load_image_model, preprocess

    folder, red = one_patch_model(tmp_path)
    photo = one_patch_photo(tmp_path / "red.png")
    from attnviz.inputs.imagefile import load_image

    im = load_image_model(str(folder))
    pixel_values = preprocess(im, load_image(photo))[0]
    with torch.no_grad():
        logits = im.model(pixel_values=pixel_values).logits[0]
        black = im.model(pixel_values=torch.full_like(pixel_values, -1.0)).logits[0]
    assert float(logits[1]) > 1.0 and float(black[1]) == 0.0  # the red patch is what the logit depends on
    result = attend_image(photo, im, plan=image_plan(im, (-1,)))
    e = explain_image(im, result, ("relevance", "grad-attention"), target_class=1)
    for name in ("relevance", "grad-attention"):
        assert int(ranking(e.get(name).values)[0]) == red, name

    out = tmp_path / "faith"
    r = runner.invoke(app, ["faithfulness", str(photo), "-m", str(folder), "-o", str(out), "--target-class", "1",
                            "--methods", "relevance,grad-attention,attention", "--steps", "16", "--seeds", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    curves = {(c["method"], c["order"], c["seed"]): c for c in doc["inputs"][0]["curves"]}
    start = doc["inputs"][0]["probability"]
    for name in ("relevance", "grad-attention"):
        pos = curves[(name, "positive", None)]["probabilities"]
        assert pos[1] < start - 0.2  # the first patch removed is the red one: the probability falls at once
        assert pos[1] == pytest.approx(min(pos[1:]), abs=0.05)
    scores = {m["name"]: m for m in doc["methods"]}
    assert scores["relevance"]["positive_auc"] < doc["random"]["positive_auc"]
    assert scores["relevance"]["negative_auc"] > doc["random"]["negative_auc"]


# ---------------------------------------------------------------------------
# attnviz faithfulness: contract and refusals


def test_faithfulness_json_parquet_and_figure(vit_folder, tmp_path, one_thread):
    import pyarrow.parquet as pq

    folder, photo = vit_folder
    photos = tmp_path / "photos"
    photos.mkdir()
    make_photo(photos / "a.png", seed=1)
    make_photo(photos / "b.jpg", size=(60, 30), seed=2)
    (photos / "notes.txt").write_text("not a photo")
    out = tmp_path / "f"
    r = runner.invoke(app, ["faithfulness", str(photos), "-m", str(folder), "-o", str(out), "--steps", "4", "--seeds", "3",
                            "--batch-size", "5", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc == json.loads((out / "faithfulness.json").read_text())
    assert [m["name"] for m in doc["methods"]] == ["attention", "rollout", "grad-attention", "relevance", "value-norm"]
    assert doc["steps"] == 4 and doc["baseline"] == "mean" and doc["random"]["seeds"] == 3
    assert doc["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(doc["inputs"]) == 2
    # at most one forward per distinct perturbed photo (+ the photo itself); identical perturbations are shared
    per_photo = (2 * 5 + 3) * 3 + 1
    assert 2 * 4 < doc["forward_passes"] <= 2 * (per_photo + 1)
    for inp in doc["inputs"]:
        for c in inp["curves"]:
            assert c["probabilities"][0] == pytest.approx(inp["probability"], abs=1e-6)
            f = doc["fractions"]
            auc = sum((f[k] - f[k - 1]) * (c["probabilities"][k] + c["probabilities"][k - 1]) / 2 for k in range(1, 5))
            assert c["auc"] == pytest.approx(auc, abs=1e-5)
    rel = [c["auc"] for i in doc["inputs"] for c in i["curves"] if c["method"] == "relevance" and c["order"] == "positive"]
    assert next(m for m in doc["methods"] if m["name"] == "relevance")["positive_auc"] == pytest.approx(sum(rel) / 2, abs=1e-6)
    table = pq.read_table(out / "faithfulness.parquet").to_pydict()
    assert len(table["auc"]) == 2 * (2 * 5 + 3)
    assert set(table["order"]) == {"positive", "negative", "random"}
    assert (out / "faithfulness.png").stat().st_size > 10_000


def test_faithfulness_refusals(vit_folder, tmp_path):
    folder, photo = vit_folder
    base = ["faithfulness", str(photo), "-m", str(folder), "-o", str(tmp_path / "o")]
    assert "--steps" in one_error_line(runner.invoke(app, base + ["--steps", "0"]), 2)
    assert "--baseline" in one_error_line(runner.invoke(app, base + ["--baseline", "noise"]), 2)
    assert "html" in one_error_line(runner.invoke(app, base + ["--format", "html"]), 2)
    assert "unknown method" in one_error_line(runner.invoke(app, base + ["--methods", "lime"]), 2)
    dino = make_vision_model(tmp_path, "dinov2")
    assert "no classification head" in one_error_line(runner.invoke(app, ["faithfulness", str(photo), "-m", str(dino), "-o",
                                                                          str(tmp_path / "d")]), 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no photos" in one_error_line(runner.invoke(app, ["faithfulness", str(empty), "-m", str(folder), "-o",
                                                                   str(tmp_path / "e")]), 4)
    assert not (tmp_path / "o").exists()


@needs_deit
def test_real_deit_faithfulness_gradient_methods_beat_random(tmp_path):
    r = runner.invoke(app, ["faithfulness", str(SAMPLES / "chelsea.png"), "-m", str(DEIT), "-o", str(tmp_path / "f"),
                            "--steps", "8", "--seeds", "3", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    scores = {m["name"]: m for m in doc["methods"]}
    rnd = doc["random"]
    for name in ("relevance", "grad-attention"):
        assert scores[name]["positive_auc"] < rnd["positive_auc"] - 2 * rnd["std"]
        assert scores[name]["negative_auc"] > rnd["negative_auc"]


def test_perturbation_curves_share_identical_perturbations_and_batch_them():
    from attnviz.analysis.faithfulness import area, perturbation_curves, ranking, removed_counts

    seen = []

    def predict(masks):
        seen.append(len(masks))
        return [1.0 - float(m.float().mean()) for m in masks]  # probability falls with the share removed

    order = ranking(torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7]))
    assert order.tolist() == [1, 4, 2, 3, 0]
    curves, n = perturbation_curves([("m", "positive", None, order), ("copy", "positive", None, order.clone()),
                                     ("m", "negative", None, order.flip(0))], 5, 5, predict, 1.0, batch_size=3)
    assert n == 5 + 4  # 5 masks of the first order, its copy shares them, the negative shares only "all removed"
    assert seen == [3, 3, 3] and sum(seen) == n
    assert curves[0].probabilities == curves[1].probabilities == pytest.approx((1.0, 0.8, 0.6, 0.4, 0.2, 0.0))
    assert curves[0].auc == pytest.approx(0.5) and area((0, 1), (1, 1)) == 1
    assert removed_counts(196, 10)[:3] == [0, 20, 39]


# ---------------------------------------------------------------------------
# attnviz text --method and text faithfulness


SENTENCE = "The animal didn't cross the street because it was too tired."


@pytest.fixture(scope="module")
def text_folders(tmp_path_factory):
    """A tiny GPT-2 with its LM head, a tiny BERT classifier (3 labels) and a base BERT, saved with tokenizers."""
    import transformers as tf

    from tiny import make_lm_model, make_text_model, wordpiece_tokenizer

    root = tmp_path_factory.mktemp("methods-text")
    lm = make_lm_model(root, "gpt2")
    tok = wordpiece_tokenizer()
    torch.manual_seed(0)
    cls = tf.BertForSequenceClassification(tf.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                         num_attention_heads=4, intermediate_size=40, num_labels=3,
                                                         initializer_range=0.3)).eval()
    cls.save_pretrained(root / "bert-cls")
    tok.save_pretrained(root / "bert-cls")
    return {"lm": lm, "cls": root / "bert-cls", "base": make_text_model(root, "bert"), "t5": make_lm_model(root, "t5")}


def _text_json(*args):
    r = runner.invoke(app, ["text", *[str(a) for a in args], "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_text_methods_on_a_causal_lm_equal_autograd_through_eager(text_folders, tmp_path, one_thread):
    import transformers as tf

    folder = text_folders["lm"]
    doc = _text_json(SENTENCE, "-m", folder, "--token", "it", "--method", "relevance,grad-attention,value-norm,attention",
                     "-o", tmp_path / "o")
    tok = tf.AutoTokenizer.from_pretrained(folder)
    ids = tok(SENTENCE, return_tensors="pt")["input_ids"]
    row = doc["focus"]["token_indices"][-1]
    assert doc["tokens"][row].lstrip("Ġ") == "it"
    assert doc["target"] == {"kind": "token", "index": int(ids[0, row + 1]), "label": tok.decode([int(ids[0, row + 1])]),
                             "quantity": "log-probability", "position": row}
    assert [r["position"] for r in doc["method_rows"]] == [row]
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    from attnviz.signals import Target

    _, pairs = eager_grads(model, {"input_ids": ids}, Target("token", int(ids[0, row + 1]), "", position=row))
    R = chefer_reference(pairs)
    maps = {m["name"]: np.asarray(m["rows"][0]["values"]) for m in doc["methods"]}
    assert np.allclose(maps["relevance"], R[row].numpy(), atol=1e-5)
    a, g = pairs[-1]
    assert np.allclose(maps["grad-attention"], (g * a).clamp(min=0).mean(0)[row].numpy(), atol=1e-5)
    assert np.allclose(maps["attention"], a.mean(0)[row].numpy(), atol=1e-6)
    assert np.all(maps["relevance"][row + 1:] == 0)  # a causal model: nothing from later tokens
    names = {Path(f).name for f in doc["files"]}
    assert {"method-relevance.png", "method-value-norm.png", "methods.png"} <= names


def test_text_methods_on_a_classifier_explain_the_cls_row_and_the_class(text_folders, tmp_path, one_thread):
    import transformers as tf

    folder = text_folders["cls"]
    doc = _text_json(SENTENCE, "-m", folder, "--method", "relevance", "--target-class", "2", "-o", tmp_path / "o")
    tok = tf.AutoTokenizer.from_pretrained(folder)
    enc = tok(SENTENCE, return_tensors="pt")
    cls_pos = enc["input_ids"][0].tolist().index(tok.cls_token_id)
    assert doc["method_rows"][0]["position"] == cls_pos
    assert doc["target"]["kind"] == "class" and doc["target"]["index"] == 2 and doc["target"]["quantity"] == "logit"
    model = tf.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    from attnviz.signals import Target

    _, pairs = eager_grads(model, dict(enc), Target("class", 2, "LABEL_2"))
    assert np.allclose(doc["method_rows"][0]["values"], chefer_reference(pairs)[cls_pos].numpy(), atol=1e-5)


def test_text_method_refusals(text_folders, tmp_path):
    base = text_folders["base"]
    line = one_error_line(runner.invoke(app, ["text", SENTENCE, "-m", str(base), "--method", "relevance", "-o", str(tmp_path / "a")]), 2)
    assert "names no task head" in line
    line = one_error_line(runner.invoke(app, ["text", SENTENCE, "-m", str(text_folders["lm"]), "--method", "relevance",
                                              "--target-class", "1", "-o", str(tmp_path / "b")]), 2)
    assert "--target-class is for classifiers" in line
    line = one_error_line(runner.invoke(app, ["generate", SENTENCE, "-m", str(text_folders["t5"]), "--method", "value-norm",
                                              "-o", str(tmp_path / "c")]), 2)
    assert "encoder-decoder" in line
    assert not any((tmp_path / d).exists() for d in "abc")
    # value-norm needs no head: served on the base model, its rows equal the explicit products
    doc = _text_json(SENTENCE, "-m", base, "--method", "value-norm", "--token", "it", "-o", tmp_path / "d")
    assert doc["target"] is None and doc["method"] == "value-norm"
    import transformers as tf

    model = tf.AutoModel.from_pretrained(base).eval()
    enc = dict(tf.AutoTokenizer.from_pretrained(base)(SENTENCE, return_tensors="pt"))
    layers = model.encoder.layer
    explicit = explicit_value_norm(model, enc, [l.attention.self.value for l in layers], [l.attention.output.dense for l in layers],
                                   "linear")
    row = doc["method_rows"][0]["position"]
    assert np.allclose(doc["method_rows"][0]["values"], explicit[-1][row].numpy(), atol=1e-5)


def one_token_classifier(root: Path) -> tuple[Path, str]:
    """A 1-layer BERT classifier built by hand whose "yes" logit moves only with the token "cat" (uniform attention,
    near-linear layer norms, only that token's embedding non-zero). Returns the folder and the token."""
    import transformers as tf

    from tiny import wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    cfg = tf.BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                        num_labels=2, layer_norm_eps=1e6, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    model = tf.BertForSequenceClassification(cfg).eval()
    cat = tok.convert_tokens_to_ids("cat")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.bert.embeddings.word_embeddings.weight[cat, 0] = 100.0
        layer = model.bert.encoder.layer[0]
        for ln in (model.bert.embeddings.LayerNorm, layer.attention.output.LayerNorm, layer.output.LayerNorm):
            ln.weight.fill_(1000.0)
        layer.attention.self.value.weight.copy_(torch.eye(8))
        layer.attention.output.dense.weight.copy_(torch.eye(8))
        model.bert.pooler.dense.weight.copy_(torch.eye(8))
        model.classifier.weight[1, 0] = 1.0
    folder = root / "one-token"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, "cat"


def test_a_decision_that_depends_on_one_token_ranks_it_first(tmp_path, one_thread):
    from attnviz.analysis.faithfulness import ranking

    folder, word = one_token_classifier(tmp_path)
    text = "the dog saw a cat near the old red barn"
    doc = _text_json(text, "-m", folder, "--method", "relevance,grad-attention", "--target-class", "1", "-o", tmp_path / "o")
    cat = doc["tokens"].index(word)
    for m in doc["methods"]:
        values = torch.tensor(m["rows"][0]["values"])
        values[doc["method_rows"][0]["position"]] = -1  # the explained [CLS] row itself is not a candidate
        assert int(ranking(values)[0]) == cat, m["name"]
    r = runner.invoke(app, ["faithfulness", "--text", text, "-m", str(folder), "-o", str(tmp_path / "f"), "--target-class", "1",
                            "--methods", "relevance,grad-attention,attention", "--steps", "10", "--seeds", "4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["unit"] == "token" and doc["baseline"] == "[MASK]"
    assert doc["inputs"][0]["units"] == 10  # the words; [CLS] and [SEP] are never removed
    start = doc["inputs"][0]["probability"]
    curves = {(c["method"], c["order"]): c for c in doc["inputs"][0]["curves"]}
    for name in ("relevance", "grad-attention"):
        assert curves[(name, "positive")]["probabilities"][1] < start - 0.1  # "cat" goes first
    scores = {m["name"]: m for m in doc["methods"]}
    assert scores["relevance"]["positive_auc"] < doc["random"]["positive_auc"]


def test_text_faithfulness_on_a_corpus_and_its_refusals(text_folders, tmp_path, one_thread):
    import pyarrow.parquet as pq

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n\nthe dog ran home fast today\n")
    out = tmp_path / "f"
    r = runner.invoke(app, ["faithfulness", str(corpus), "-m", str(text_folders["lm"]), "-o", str(out), "--steps", "3",
                            "--seeds", "2", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert len(doc["inputs"]) == 2 and doc["unit"] == "token"
    assert all(i["target"]["kind"] == "token" for i in doc["inputs"])
    assert len(pq.read_table(out / "faithfulness.parquet").to_pydict()["auc"]) == 2 * (2 * 5 + 2)
    line = one_error_line(runner.invoke(app, ["faithfulness", "--text", "a cat", "-m", str(text_folders["base"]), "-o",
                                              str(tmp_path / "g")]), 2)
    assert "no classification or causal language-model head" in line
    line = one_error_line(runner.invoke(app, ["faithfulness", "--text", "a cat", "-m", str(text_folders["lm"]), "-o",
                                              str(tmp_path / "h"), "--baseline", "mean"]), 2)
    assert "--baseline for texts" in line


def test_generate_method_explains_a_generated_token(lm_models, tmp_path, one_thread):
    import transformers as tf

    from attnviz.signals import Target

    folder = lm_models("llama")
    r = runner.invoke(app, ["generate", "The capital of France is", "-m", str(folder), "-n", "4", "--step", "1",
                            "--method", "relevance,grad-attention,value-norm", "-o", str(tmp_path / "g"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    ids = doc["prompt"]["ids"] + doc["generated"]["ids"][:2]
    p = doc["prompt_length"]
    assert doc["method_step"] == 1
    assert doc["target"]["index"] == doc["generated"]["ids"][1] and doc["target"]["position"] == p
    assert [m["rows"][0]["position"] for m in doc["methods"]] == [p, p, p]
    assert all(len(m["rows"][0]["values"]) == len(ids) for m in doc["methods"])
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    _, pairs = eager_grads(model, {"input_ids": torch.tensor([ids])}, Target("token", ids[-1], "", position=p))
    maps = {m["name"]: np.asarray(m["rows"][0]["values"]) for m in doc["methods"]}
    assert np.allclose(maps["relevance"], chefer_reference(pairs)[p].numpy(), atol=1e-5)
    names = {Path(f).name for f in doc["files"]}
    assert {"method-relevance.png", "methods.png"} <= names
    # without --token/--step the last generated token is explained
    r = runner.invoke(app, ["generate", "The capital of France is", "-m", str(folder), "-n", "3", "--method", "value-norm",
                            "-o", str(tmp_path / "h"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["method_step"] == len(doc["generated"]["ids"]) - 1


def mm_reference(enc, dec, cross, zero_rows: bool = False):
    """Chefer et al.'s encoder-decoder rules as their code runs them (Transformer-MM-Explainability,
    DETR/modules/ExplanationGenerator.py: generate_ours with use_lrp=False, normalize_self_attention=True,
    apply_self_in_rule_10=True); each argument is a list of (cam [H, Q, K], grad [H, Q, K]). With ``zero_rows``, the
    one documented departure: a row of R - I that sums to 0 stays 0 (the authors' code divides by 0 there, and its
    NaNs then drop the whole cross-attention update)."""
    def avg_heads(cam, grad):
        return (grad * cam).clamp(min=0).mean(dim=0)

    def handle_residual(orig):
        a = orig.clone()
        a -= torch.eye(a.shape[-1])
        sums = a.sum(dim=-1, keepdim=True)
        a = torch.where(sums > 0, a / sums.clamp(min=1e-30), torch.zeros_like(a)) if zero_rows else a / sums
        return a + torch.eye(a.shape[-1])

    s, q = enc[0][0].shape[-1], dec[0][0].shape[-1]
    R_ii, R_qq, R_qi = torch.eye(s), torch.eye(q), torch.zeros(q, s)
    for cam, grad in enc:
        R_ii += torch.matmul(avg_heads(cam, grad), R_ii)
    for (cam, grad), (ccam, cgrad) in zip(dec, cross):
        a = avg_heads(cam, grad)
        add_qq, add_qi = torch.matmul(a, R_qq), torch.matmul(a, R_qi)
        R_qq += add_qq
        R_qi += add_qi
        add = torch.matmul(handle_residual(R_qq).t(), torch.matmul(avg_heads(ccam, cgrad), handle_residual(R_ii)))
        add[torch.isnan(add)] = 0
        R_qi += add
    return R_qi


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_encoder_decoder_relevance_equals_the_reference_rules(kind, text_folders, tmp_path, one_thread):
    """T5 (relative position bias) and BART: relevance = the authors' encoder-decoder rules on autograd through eager.

    At the last decoder position (``--token </s>``) no row of R - I is all 0, and attnviz equals their code as it is;
    at the default position (the one predicting the target's last word) the later, causally masked positions get no
    gradient, so their rows are 0: the authors' code then drops every cross-attention update (all zeros), attnviz keeps
    those rows at 0 (``mm_reference(zero_rows=True)``)."""
    import transformers as tf

    from tiny import make_lm_model

    folder = text_folders["t5"] if kind == "t5" else make_lm_model(tmp_path, "bart")
    source, target = "The animal didn't cross the street", "Das Tier ging nicht"
    tok = tf.AutoTokenizer.from_pretrained(folder)
    model = tf.AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager").eval()
    enc = tok(source, return_tensors="pt")
    start = model.config.decoder_start_token_id
    dec_ids = torch.tensor([[start] + tok(text_target=target)["input_ids"]])
    for focus, zero_rows in ((None, True), ("</s>", False)):
        occurrences = tok.convert_ids_to_tokens(dec_ids[0].tolist()).count("</s>")
        extra = ["--token", focus, "--token-index", str(occurrences - 1)] if focus else []
        doc = _text_json(source, "-m", folder, "--target", target, "--method", "relevance,grad-attention,value-norm,attention",
                         *extra, "-o", tmp_path / f"o{zero_rows}")
        assert doc["method_checks"]["max_abs_diff"]["logits"] <= 1e-5
        row = doc["method_rows"][0]["position"]
        last = dec_ids.shape[1] - 1
        assert row == (last - 2 if focus is None else last) and len(doc["tokens"]) == enc["input_ids"].shape[1]
        nxt = int(dec_ids[0, row + 1]) if row < last else None
        with torch.enable_grad():
            out = model(**enc, decoder_input_ids=dec_ids, output_attentions=True)
            atts = [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
            for a in atts:
                a.retain_grad()
            if nxt is None:
                nxt = int(out.logits[0, row].argmax())
            torch.log_softmax(out.logits[0, row], -1)[nxt].backward()
        assert doc["target"]["index"] == nxt
        pairs = lambda seq: [(a.detach()[0], a.grad[0]) for a in seq]  # noqa: E731
        R = mm_reference(pairs(out.encoder_attentions), pairs(out.decoder_attentions), pairs(out.cross_attentions),
                         zero_rows=zero_rows)
        maps = {m["name"]: np.asarray(m["rows"][0]["values"]) for m in doc["methods"]}
        scale = float(np.abs(R[row].numpy()).max())
        assert scale > 1e-6  # not all zero: the comparison means something
        assert np.allclose(maps["relevance"], R[row].numpy(), atol=1e-5 * scale + 1e-8, rtol=0)  # + the JSON's 8 decimals
        ca, cg = pairs(out.cross_attentions)[-1]
        expected = (cg * ca).clamp(min=0).mean(0)[row].numpy()
        assert np.allclose(maps["grad-attention"], expected, atol=1e-5 * float(np.abs(expected).max()) + 1e-8, rtol=0)
        assert np.allclose(maps["attention"], ca.mean(0)[row].numpy(), atol=1e-6)
    # value-norm over the source: the last decoder layer's cross-attention, head by head
    last = model.model.decoder.layers[-1].encoder_attn if kind == "bart" else model.decoder.block[-1].layer[1].EncDecAttention
    v_mod, o_mod = (last.v_proj, last.out_proj) if kind == "bart" else (last.v, last.o)
    with torch.no_grad():
        v = v_mod(out.encoder_last_hidden_state)[0]  # [S, H*d]
    heads = ca.shape[0]
    d = v.shape[-1] // heads
    explicit = torch.zeros(v.shape[0])
    with torch.no_grad():
        for h in range(heads):
            f = v[:, h * d:(h + 1) * d] @ o_mod.weight[:, h * d:(h + 1) * d].t()  # f_h(x_j) [S, D]
            explicit += ca[h, row] * torch.linalg.vector_norm(f, dim=-1)
    explicit /= heads
    assert np.allclose(maps["value-norm"], explicit.numpy(), atol=1e-5 * float(explicit.abs().max()) + 1e-8, rtol=0)
    line = one_error_line(runner.invoke(app, ["text", source, "-m", str(folder), "--method", "rollout", "-o", str(tmp_path / "r")]), 2)
    assert "rollout has no rule for cross-attention" in line


# ---------------------------------------------------------------------------
# attnviz detect --method


@pytest.mark.parametrize("kind", ["detr", "yolos"])
def test_detect_methods_explain_an_object_by_its_class_logit(kind, tmp_path, one_thread):
    import transformers as T
    from PIL import Image

    from detect_tiny import make_detector

    folder = make_detector(tmp_path, kind)
    photo = make_photo(tmp_path / "p.png", size=(90, 70))
    r = runner.invoke(app, ["detect", str(photo), "-m", str(folder), "--threshold", "0", "--object", "1",
                            "--method", "all", "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    d = doc["detections"][1]
    assert doc["method_object"] == 1 and doc["target"]["kind"] == "object" and doc["target"]["position"] == d["query"]
    assert [m["name"] for m in doc["methods"]] == ["attention", "grad-attention", "relevance", "value-norm"]
    assert any(Path(f).name == "object-1-methods.png" for f in doc["files"])
    model = T.AutoModelForObjectDetection.from_pretrained(folder, attn_implementation="eager").eval()
    inputs = T.AutoImageProcessor.from_pretrained(folder)(images=Image.open(photo).convert("RGB"), return_tensors="pt")
    if kind == "yolos":
        inputs.pop("pixel_mask", None)
    q, c = d["query"], doc["target"]["index"]
    with torch.enable_grad():
        out = model(**inputs, output_attentions=True)
        atts = [*out.attentions] if kind == "yolos" else [*out.encoder_attentions, *out.decoder_attentions, *out.cross_attentions]
        for a in atts:
            a.retain_grad()
        assert int(out.logits[0, q, :-1].argmax()) == c
        out.logits[0, q, c].backward()
    pairs = lambda seq: [(a.detach()[0], a.grad[0]) for a in seq]  # noqa: E731
    rows, cols = np.asarray(doc["methods"][0]["map"]).shape
    maps = {m["name"]: np.asarray(m["map"]) for m in doc["methods"]}
    if kind == "yolos":
        t = out.attentions[0].shape[-1]
        row, patches = t - model.config.num_detection_tokens + q, slice(1, 1 + rows * cols)
        R = chefer_reference(pairs(out.attentions))[row, patches]
        a, g = pairs(out.attentions)[-1]
        grad_att = (g * a).clamp(min=0).mean(0)[row, patches]
    else:
        R = mm_reference(pairs(out.encoder_attentions), pairs(out.decoder_attentions), pairs(out.cross_attentions), zero_rows=True)[q]
        a, g = pairs(out.cross_attentions)[-1]
        grad_att = (g * a).clamp(min=0).mean(0)[q]
    for name, expected in (("relevance", R), ("grad-attention", grad_att)):
        expected = expected.reshape(rows, cols).numpy()
        scale = float(np.abs(expected).max())
        assert scale > 0, name
        assert np.allclose(maps[name], expected, atol=1e-5 * scale + 1e-8, rtol=0), name
    line = one_error_line(runner.invoke(app, ["detect", str(photo), "-m", str(folder), "--method", "rollout",
                                              "-o", str(tmp_path / "x")]), 2)
    assert "does not apply here" in line


def test_detect_method_refuses_deformable_attention(tmp_path):
    from detect_tiny import make_detector

    folder = make_detector(tmp_path, "deformable_detr")
    photo = make_photo(tmp_path / "p.png", size=(90, 70))
    line = one_error_line(runner.invoke(app, ["detect", str(photo), "-m", str(folder), "--threshold", "0", "--method",
                                              "relevance", "-o", str(tmp_path / "o")]), 2)
    assert "deformable attention" in line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------
# red-team findings, kept fixed


def test_faithfulness_without_random_orders_and_with_uneven_steps(text_folders, tmp_path, one_thread):
    out = tmp_path / "f"
    r = runner.invoke(app, ["faithfulness", "--text", "the cat sat on the mat today", "-m", str(text_folders["cls"]),
                            "-o", str(out), "--steps", "4", "--seeds", "0", "--methods", "relevance", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["random"] is None and doc["unit"] == "token"
    units = doc["inputs"][0]["units"]
    assert units == 7  # the words; [CLS] (the explained row) and [SEP] stay
    assert doc["inputs"][0]["fractions"] == [round(round(k * units / 4) / units, 6) for k in range(5)]
    assert doc["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (out / "faithfulness.png").exists()
    line = one_error_line(runner.invoke(app, ["faithfulness", "--text", "a cat", "-m", str(text_folders["cls"]), "-o",
                                              str(tmp_path / "g"), "--methods", ",,"]), 2)
    assert "--methods is empty" in line


def test_value_norm_on_distilbert_and_the_base_model_check(tmp_path, one_thread):
    import transformers as tf

    from tiny import wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    torch.manual_seed(0)
    model = tf.DistilBertModel(tf.DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=40))
    folder = tmp_path / "distilbert"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    doc = _text_json(SENTENCE, "-m", folder, "--method", "value-norm", "--token", "it", "-o", tmp_path / "o")
    checks = doc["method_checks"]["max_abs_diff"]
    assert checks["projection_input"] <= 1e-6 and checks["last_hidden_state"] <= 1e-4


def test_encoder_decoder_default_row_predicts_the_last_word_of_the_target(text_folders, tmp_path, one_thread):
    doc = _text_json("hello world", "--target", "hallo welt", "-m", text_folders["t5"], "--method", "relevance",
                     "-o", tmp_path / "o")
    target_tokens = doc["target_tokens"]
    row = doc["method_rows"][0]["position"]
    assert target_tokens[-1] == "</s>" and row == len(target_tokens) - 3  # predicts the token before </s>
    assert doc["target"]["position"] == row


def test_method_all_leaves_out_what_does_not_apply(tmp_path, one_thread):
    photo = make_photo(tmp_path / "p.png")
    dino = make_vision_model(tmp_path, "dinov2")
    r = runner.invoke(app, ["image", str(photo), "-m", str(dino), "-o", str(tmp_path / "o"), "--method", "all", "--json"])
    assert r.exit_code == 0, r.output
    assert [m["name"] for m in json.loads(r.stdout)["methods"]] == ["attention", "rollout", "value-norm"]
    assert "grad-attention, relevance do not apply" in r.stderr



def test_a_decoder_layer_the_encoder_lacks(tmp_path, one_thread):
    """BART with 2 encoder and 3 decoder layers: --layer 2 names the decoder's last layer for the methods and views."""
    from tiny import make_lm_model

    folder = make_lm_model(tmp_path, "bart")
    doc = _text_json("hello world", "--target", "hallo welt", "-m", folder, "--layer", "2", "--method", "attention,value-norm",
                     "-o", tmp_path / "o")
    assert [m["layer"] for m in doc["methods"]] == [2, 2]
    line = one_error_line(runner.invoke(app, ["text", "hello world", "--target", "hallo welt", "-m", str(folder), "--layer",
                                              "3", "-o", str(tmp_path / "p")]), 2)
    assert "out of range" in line and "3 layers" in line
