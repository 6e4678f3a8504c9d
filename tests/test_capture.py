"""The capture engine (attnviz.capture): every plan equals eager output_attentions on every architecture.

Tiny random models from tests/tiny.py; the reference is transformers' eager
``output_attentions`` on the same inputs. Row blocks, rollout product blocks and
the lazily zeroed allocation are shrunk so that every path runs with many blocks
even on 20-token inputs (one test runs the default sizes).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import attnviz
import attnviz.capture as cap_mod
from attnviz.methods.rollout import attention_rollout
from attnviz.capture import FULL, CapturePlan, attention_shapes, capture, eager_probabilities
from attnviz.errors import OutputError, UsageError
from attnviz.report import AttentionWriter, attention_file_size, attention_tensor_name

from tiny import FALCON_EAGER, TEXT, TEXT_KINDS, eager_attentions

TOL = 1e-5
FALLBACK = {"mpnet", "deberta-v2"} | ({"falcon", "falcon-old"} if FALCON_EAGER else set())  # not routed through transformers' AttentionInterface
ROLLOUTS = [(f, d, p) for f in ("mean", "max", "min") for d, p in ((0.0, ()), (0.3, (0,)))]


@pytest.fixture(scope="module", autouse=True)
def many_blocks():
    """A few query rows per block, 5-row product blocks, every map from the lazily zeroed allocator."""
    mp = pytest.MonkeyPatch()
    mp.setattr(cap_mod, "BLOCK_BYTES", 4 * 4 * 40 * 3)
    mp.setattr(cap_mod, "PRODUCT_ROWS", 5)
    mp.setattr(cap_mod, "LAZY_ZERO_BYTES", 0)
    yield
    mp.undo()


class Case:
    """A tiny model of one kind, its inputs for TEXT and the eager reference maps ``{kind: [L, H, Q, K]}``."""

    def __init__(self, path, model, inputs, ref):
        self.path, self.model, self.inputs, self.ref = path, model, inputs, ref


def _inputs(path, model) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(TEXT, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if model.config.is_encoder_decoder:
        target = tok(text_target="Der Hund", add_special_tokens=True)["input_ids"]
        inputs["decoder_input_ids"] = torch.tensor([[model.config.decoder_start_token_id, *target]])
    return inputs


@pytest.fixture(scope="module")
def cases(tiny_models):
    from transformers import AutoModel

    cache: dict[str, Case] = {}

    def get(kind: str) -> Case:
        if kind not in cache:
            path = tiny_models(kind)
            model = AutoModel.from_pretrained(path).eval()
            inputs = _inputs(path, model)
            cache[kind] = Case(path, model, inputs, eager_attentions(path, inputs))
        return cache[kind]

    return get


def _close(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    diff = (a.float() - b.float()).abs().max().item()
    assert diff <= TOL, f"{what}: max abs diff {diff:.3g} > {TOL}"


# ---------------------------------------------------------------------------
# every plan on every architecture


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_full_plan_equals_eager(cases, kind):
    c = cases(kind)
    before = c.model.config._attn_implementation
    result = capture(c.model, c.inputs, FULL)
    assert result.backend == ("eager" if kind in FALLBACK else "sdpa+attnviz")
    assert (result.notice is not None) == (kind in FALLBACK)
    assert set(result.attention) == set(c.ref)
    for k, ref in c.ref.items():
        maps = result.attention[k]
        assert (maps.num_layers, maps.num_heads, maps.num_queries, maps.num_keys) == tuple(ref.shape)
        _close(maps.full, ref, f"{kind}/{k} full")
    assert c.model.config._attn_implementation == before
    assert result.outputs is not None


@pytest.mark.parametrize("kind", ["mpnet", "deberta-v2"])
def test_fallback_maps_are_the_softmax_the_model_computes(cases, kind, monkeypatch):
    """For models captured by the eager fallback, "equals eager" would compare eager with itself: instead,
    the maps must be the attention probabilities the model's own forward computes (its softmax calls
    in a plain forward, without ``output_attentions``)."""
    c = cases(kind)
    n = c.inputs["input_ids"].shape[-1]
    seen: list[torch.Tensor] = []
    softmax = torch.nn.functional.softmax

    def spy(x, dim=None, *args, **kwargs):
        out = softmax(x, dim, *args, **kwargs)
        if out.dim() == 4 and out.shape[-2:] == (n, n):
            seen.append(out[0].detach().float().clone())
        return out

    monkeypatch.setattr(torch.nn.functional, "softmax", spy)
    with torch.no_grad():
        c.model(**c.inputs)
    monkeypatch.setattr(torch.nn.functional, "softmax", softmax)
    result = capture(c.model, c.inputs, FULL)
    assert result.backend == "eager"
    assert len(seen) == result.attention["self"].num_layers
    _close(result.attention["self"].full, torch.stack(seen), f"{kind} fallback vs the model's softmax")


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_layer_plan_equals_eager(cases, kind):
    c = cases(kind)
    result = capture(c.model, c.inputs, CapturePlan(layers=frozenset({1})))
    for k, ref in c.ref.items():
        maps = result.attention[k]
        assert maps.full is None and set(maps.layers) == {1}
        _close(maps.layer(1), ref[1], f"{kind}/{k} layer 1")
        with pytest.raises(KeyError):
            maps.layer(0)


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_rows_plan_equals_eager(cases, kind):
    c = cases(kind)
    n = c.inputs["input_ids"].shape[1]
    rows = (1, n - 1)  # includes the last token
    cross_rows = (0, -1)
    result = capture(c.model, c.inputs, CapturePlan(rows=rows, cross_rows=cross_rows, need_outputs=False))
    for k, ref in c.ref.items():
        maps = result.attention[k]
        q = ref.shape[2]
        want = tuple(r for r in (cross_rows if k == "cross" else rows) if -q <= r < q)
        assert maps.row_index == want, k
        assert maps.full is None and not maps.layers
        for r in want:
            _close(maps.query_row(r), ref[:, :, r], f"{kind}/{k} row {r}")


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_rollout_plan_equals_rollout_of_eager_maps(cases, kind):
    c = cases(kind)
    for fusion, discard, protect in ROLLOUTS:
        plan = CapturePlan(rollout=True, head_fusion=fusion, discard_ratio=discard, protect=protect, need_outputs=False)
        result = capture(c.model, c.inputs, plan)
        for k, ref in c.ref.items():
            maps = result.attention[k]
            if k == "cross":
                assert maps.rollout is None
                continue
            expected = attention_rollout(ref, fusion, discard, protect)
            _close(maps.rollout, expected, f"{kind}/{k} rollout {fusion} {discard}")
            assert maps.rollout_settings == {"head_fusion": fusion, "discard_ratio": discard}


@pytest.mark.parametrize("kind", TEXT_KINDS)
def test_streamed_file_equals_eager(cases, kind, tmp_path):
    from safetensors import safe_open

    c = cases(kind)
    shapes = attention_shapes(c.model, c.inputs)
    assert shapes == {k: tuple(v.shape) for k, v in c.ref.items()}
    path = tmp_path / "attn.safetensors"
    meta = {"model": kind, "tokens": ["a", "b"]}
    size = attention_file_size(shapes, "float32", meta)
    with AttentionWriter(path, shapes, "float32", meta) as writer:
        result = capture(c.model, c.inputs, CapturePlan(on_layer=writer.write_layer, rows=(0,), need_outputs=False))
    assert all(m.full is None for m in result.attention.values())  # streamed, not kept
    assert path.stat().st_size == size
    assert not [p for p in tmp_path.iterdir() if p.name != "attn.safetensors"]  # no temporary left
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"model": kind, "tokens": '["a", "b"]', "format": "attnviz-attention", "attnviz": attnviz.__version__,
                                 "json_keys": '["tokens"]'}
        assert set(fh.keys()) == {attention_tensor_name(k) for k in c.ref}
        for k, ref in c.ref.items():
            t = fh.get_tensor(attention_tensor_name(k))
            assert t.dtype == torch.float32
            _close(t, ref, f"{kind}/{k} file")


@pytest.mark.parametrize("kind", ["llama", "t5"])
def test_streamed_half_file(cases, kind, tmp_path):
    from safetensors import safe_open

    c = cases(kind)
    shapes = attention_shapes(c.model, c.inputs)
    path = tmp_path / "half.safetensors"
    with AttentionWriter(path, shapes, "float16") as writer:
        capture(c.model, c.inputs, CapturePlan(on_layer=writer))
    assert path.stat().st_size == attention_file_size(shapes, "float16")
    with safe_open(str(path), "pt") as fh:
        for k, ref in c.ref.items():
            t = fh.get_tensor(attention_tensor_name(k))
            assert t.dtype == torch.float16
            assert (t.float() - ref).abs().max().item() <= 1e-3


def test_default_block_sizes(cases):
    """The same numbers with the real block sizes (one block per layer at this length)."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(cap_mod, "BLOCK_BYTES", 1 << 24)
        m.setattr(cap_mod, "PRODUCT_ROWS", 512)
        m.setattr(cap_mod, "LAZY_ZERO_BYTES", 1 << 22)
        for kind in ("llama", "gemma2", "t5"):
            c = cases(kind)
            result = capture(c.model, c.inputs, CapturePlan(full=True, rollout=True))
            for k, ref in c.ref.items():
                _close(result.attention[k].full, ref, f"{kind}/{k}")
                if k != "cross":
                    _close(result.attention[k].rollout, attention_rollout(ref), f"{kind}/{k} rollout")


# ---------------------------------------------------------------------------
# decoders, masks, grouped-query attention


def test_grouped_query_heads_are_reported(cases):
    assert capture(cases("llama").model, cases("llama").inputs, CapturePlan(rows=(0,))).attention["self"].kv_heads == (0, 0, 1, 1)
    assert capture(cases("mistral").model, cases("mistral").inputs, CapturePlan(rows=(0,))).attention["self"].kv_heads == (0, 0, 1, 1)
    assert capture(cases("qwen2").model, cases("qwen2").inputs, CapturePlan(rows=(0,))).attention["self"].kv_heads == (0, 0, 0, 0)
    assert capture(cases("gemma2").model, cases("gemma2").inputs, CapturePlan(rows=(0,))).attention["self"].kv_heads == (0, 0, 1, 1)
    assert capture(cases("bert").model, cases("bert").inputs, CapturePlan(rows=(0,))).attention["self"].kv_heads is None


def test_sliding_windows_are_shorter_than_the_input(cases):
    for kind in ("mistral", "qwen2", "gemma2"):
        c = cases(kind)
        assert c.model.config.sliding_window == 4
        assert c.inputs["input_ids"].shape[1] > 2 * c.model.config.sliding_window
        maps = capture(c.model, c.inputs, CapturePlan(rows=(-1,))).attention["self"]
        assert maps.causal
        last = c.ref["self"][:, :, -1]
        # some layer sees only the window: keys before it get exactly 0
        assert (last[:, :, : last.shape[-1] - 4] == 0).all(dim=(1, 2)).any()
        _close(maps.query_row(-1), last, kind)


def test_left_padding_matches_eager(cases):
    c = cases("llama")
    ids = c.inputs["input_ids"]
    pad = c.model.config.pad_token_id
    inputs = {
        "input_ids": torch.cat([torch.full((1, 3), pad), ids], dim=1),
        "attention_mask": torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1),
    }
    ref = eager_attentions(c.path, inputs)["self"]
    n = inputs["input_ids"].shape[1]
    result = capture(c.model, inputs, CapturePlan(full=True, rows=(0, 3, n - 1)))
    maps = result.attention["self"]
    _close(maps.full, ref, "left padding full")
    for r in (0, 3, n - 1):
        _close(maps.query_row(r), ref[:, :, r], f"left padding row {r}")
    rolled = capture(c.model, inputs, CapturePlan(rollout=True)).attention["self"].rollout
    _close(rolled, attention_rollout(ref), "left padding rollout")


@pytest.mark.parametrize("arch", ["bloom", "mpt"])
def test_alibi_models_fall_back_to_eager(arch, tmp_path):
    """ALiBi models (BLOOM, MPT) do not use the AttentionInterface in transformers 5: eager fallback, same numbers."""
    import transformers as tf

    config = {
        "bloom": lambda: tf.BloomConfig(vocab_size=100, hidden_size=32, n_layer=3, n_head=4),
        "mpt": lambda: tf.MptConfig(vocab_size=100, d_model=32, n_layers=3, n_heads=4, max_seq_len=64),
    }[arch]()
    torch.manual_seed(0)
    tf.AutoModel.from_config(config).save_pretrained(tmp_path)
    model = tf.AutoModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    ref = eager_attentions(tmp_path, inputs)["self"]
    before = model.config._attn_implementation
    result = capture(model, inputs, CapturePlan(full=True, rollout=True, rows=(11,)))
    assert result.backend == "eager"
    assert "eager" in result.notice and type(model).__name__ in result.notice
    maps = result.attention["self"]
    _close(maps.full, ref, arch)
    _close(maps.query_row(11), ref[:, :, 11], arch)
    _close(maps.rollout, attention_rollout(ref), arch)
    assert model.config._attn_implementation == before


@pytest.mark.parametrize("kind", sorted(FALLBACK))
def test_fallback_reports_eager_backend(cases, kind):
    c = cases(kind)
    before = c.model.config._attn_implementation
    result = capture(c.model, c.inputs, CapturePlan(layers=frozenset({0}), rollout=True))
    assert result.backend == "eager"
    assert result.notice and "eager" in result.notice
    _close(result.attention["self"].layer(0), c.ref["self"][0], kind)
    assert c.model.config._attn_implementation == before


# ---------------------------------------------------------------------------
# state restored, early stop, bad settings


@pytest.mark.parametrize("kind", ["llama", "gemma2", "t5"])
def test_implementation_restored_when_the_forward_raises(cases, kind):
    c = cases(kind)
    before = c.model.config._attn_implementation

    def boom(kind_, layer):
        if layer == 1:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture(c.model, c.inputs, CapturePlan(rollout=True), progress=boom)
    assert c.model.config._attn_implementation == before
    assert cap_mod._ACTIVE.get() is None
    # the model still runs on its own, and the next capture is complete
    with torch.no_grad():
        c.model(**c.inputs)
    result = capture(c.model, c.inputs, FULL)
    for k, ref in c.ref.items():
        _close(result.attention[k].full, ref, kind)
    assert c.model.config._attn_implementation == before


def test_early_stop_when_outputs_are_not_needed(cases):
    c = cases("llama")
    calls = []
    result = capture(c.model, c.inputs, CapturePlan(layers=frozenset({1}), need_outputs=False), progress=lambda k, l: calls.append(l))
    assert result.stopped_early and result.outputs is None
    assert calls == [0, 1]
    maps = result.attention["self"]
    assert maps.num_layers == 3
    _close(maps.layer(1), c.ref["self"][1], "early stop")
    assert c.model.config._attn_implementation == "sdpa"
    full_run = capture(c.model, c.inputs, CapturePlan(layers=frozenset({1})))
    assert not full_run.stopped_early and full_run.outputs is not None
    last = capture(c.model, c.inputs, CapturePlan(layers=frozenset({2}), need_outputs=False))
    assert last.stopped_early
    _close(last.attention["self"].layer(2), c.ref["self"][2], "early stop, last layer")


def test_bad_rollout_settings_fail_before_the_forward(cases):
    c = cases("bert")
    seen = []
    with pytest.raises(UsageError, match="head-fusion"):
        capture(c.model, c.inputs, CapturePlan(rollout=True, head_fusion="avg"), progress=lambda k, l: seen.append(l))
    with pytest.raises(UsageError, match="discard-ratio"):
        capture(c.model, c.inputs, CapturePlan(rollout=True, discard_ratio=1.0), progress=lambda k, l: seen.append(l))
    assert seen == []
    assert c.model.config._attn_implementation == "sdpa"


def test_eager_probabilities_grouped_causal():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(4, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    kk = k.repeat_interleave(2, dim=0)
    scores = q @ kk.transpose(-1, -2) * 0.3
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), torch.finfo(torch.float32).min)
    expected = torch.softmax(scores, dim=-1)
    got = eager_probabilities(q, k, 0.3, None, True, torch.tensor([0, 3, 5]))
    _close(got, expected[:, [0, 3, 5]], "eager_probabilities")


# ---------------------------------------------------------------------------
# the streaming writer's own checks


def test_writer_removes_partial_files(tmp_path):
    path = tmp_path / "a.safetensors"
    shapes = {"self": (2, 1, 3, 3)}
    with pytest.raises(OutputError, match="did not deliver every layer"):
        with AttentionWriter(path, shapes) as w:
            w.write_layer("self", 0, torch.full((1, 3, 3), 1 / 3))
    assert not path.exists() and not list(tmp_path.iterdir())
    w = AttentionWriter(path, shapes)
    with pytest.raises(OutputError, match="shape"):
        w.write_layer("self", 0, torch.zeros(1, 3, 4))
    assert not list(tmp_path.iterdir())
    with pytest.raises(OutputError, match="must end in .safetensors"):
        AttentionWriter(tmp_path / "a.bin", shapes)


@pytest.mark.parametrize("kind", ["bert", "llama", "gemma2", "t5", "mpnet"])
def test_head_maps_keep_one_head_or_the_mean(cases, kind):
    """``head_maps``: one head's [Q, K] map (or the head mean), never the layer's [H, Q, K]; equal to eager."""
    c = cases(kind)
    result = capture(c.model, c.inputs, CapturePlan(head_maps=frozenset({(1, 1), (0, None)}), need_outputs=False))
    for k, ref in c.ref.items():
        maps = result.attention[k]
        assert maps.full is None and not maps.layers
        assert set(maps.head_maps) == {(1, 1), (0, None)}
        _close(maps.head_map(1, 1), ref[1, 1], f"{kind}/{k} layer 1 head 1")
        _close(maps.head_map(0, None), ref[0].mean(dim=0), f"{kind}/{k} layer 0 head mean")
        with pytest.raises(KeyError):
            maps.head_map(1, 0)


@pytest.mark.parametrize("kind", ["bert", "llama", "deberta-v2"])
def test_follow_keeps_the_best_scoring_head_only(cases, kind):
    """``follow``: per layer the callback scores a head; only the best (layer, head) map is kept."""
    c = cases(kind)
    n = c.inputs["input_ids"].shape[1]
    seen = []

    def pick(k, layer, rows):  # score: the weight the last token puts on key 0 in head (layer % H)
        h = layer % rows.shape[0]
        seen.append((k, layer, tuple(rows.shape)))
        return h, float(rows[h, 0, 0])

    result = capture(c.model, c.inputs, CapturePlan(rows=(n - 1,), follow=pick, need_outputs=False))
    maps = result.attention["self"]
    ref = c.ref["self"]
    H = ref.shape[1]
    scores = [float(ref[l, l % H, n - 1, 0]) for l in range(ref.shape[0])]
    best = max(range(len(scores)), key=lambda l: (scores[l], -l))
    assert set(maps.head_maps) == {(best, best % H)}
    _close(maps.head_map(best, best % H), ref[best, best % H], f"{kind} followed head")
    assert [l for _, l, _ in seen] == list(range(ref.shape[0]))


def _splinter():
    from transformers import SplinterConfig, SplinterModel

    cfg = SplinterConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                         question_token_id=104)
    return SplinterModel(cfg), {"input_ids": torch.randint(0, 100, (1, 9))}


def _nllb_moe():
    from transformers import NllbMoeConfig, NllbMoeForConditionalGeneration

    cfg = NllbMoeConfig(vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, num_experts=2, expert_capacity=4,
                        max_position_embeddings=64)
    return NllbMoeForConditionalGeneration(cfg), {"input_ids": torch.randint(3, 100, (1, 7)),
                                                  "decoder_input_ids": torch.randint(3, 100, (1, 5))}


@pytest.mark.parametrize("make", [_splinter, _nllb_moe], ids=["splinter", "nllb-moe"])
def test_masks_follow_eager_not_sdpa_defaults(make):
    """Splinter's attention has no ``is_causal`` (SDPA would run its encoder causally) and NLLB-MoE's decoder
    self-attention says ``is_causal = False`` while transformers skips its causal mask: the capture must
    still equal eager, without the run-time check (``--no-verify``)."""
    torch.manual_seed(0)
    model, inputs = make()
    model.eval()
    result = capture(model, inputs, FULL)
    assert result.backend == "sdpa+attnviz"
    with torch.no_grad():
        model.set_attn_implementation("eager")
        out = model(**inputs, output_attentions=True)
    groups = ({"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
              if model.config.is_encoder_decoder else {"self": out.attentions})
    assert set(result.attention) == set(groups)
    for k, maps in groups.items():
        _close(result.attention[k].full, torch.stack([m[0] for m in maps]).float(), k)
    assert result.attention.get("decoder") is None or result.attention["decoder"].causal
