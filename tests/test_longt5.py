"""LongT5's encoder (local and transient-global attention): attnviz.longt5 stores every probability the encoder computes
in a band (+ summary keys) and nothing else; checked against an independent dense recomputation from each layer's own
projections and against eager output_attentions' blocked maps. Also: what attnviz's dense capture does with LongT5's
decoder / cross-attention, and with Funnel and Nystromformer (pooled / landmark attention)."""

from __future__ import annotations

import pytest
import torch

R, G = 3, 4  # local radius (block length 4), global block size
BL = R + 1
MODULES = ("LongT5LocalAttention", "LongT5TransientGlobalAttention")


def _config(kind: str, **over):
    import transformers as tf

    return tf.LongT5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=2, local_radius=R,
        global_block_size=G, encoder_attention_type=kind, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        initializer_factor=8.0, **over)  # large init: peaked, varied probabilities (a misplaced one shows)


def _model(kind: str, cls: str = "LongT5ForConditionalGeneration", seed: int = 0):
    import transformers as tf

    torch.manual_seed(seed)
    return getattr(tf, cls)(_config(kind)).eval()


def _inputs(n: int, real: int | None = None, decoder: bool = True, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (1, n), generator=g)
    mask = torch.ones(1, n, dtype=torch.long)
    if real is not None:
        mask[0, real:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if decoder:
        out["decoder_input_ids"] = torch.randint(2, 64, (1, 5), generator=g)
    return out


def _bucket(module, rel: torch.Tensor) -> torch.Tensor:
    return module._relative_position_bucket(rel, bidirectional=True, num_buckets=module.relative_attention_num_buckets,
                                            max_distance=module.relative_attention_max_distance)


def reference(model, inputs) -> tuple[torch.Tensor, int]:
    """``([L, H, n, n + S], S)``: softmax, per encoder layer and head, of ``q_i . k_j`` (no scaling) + layer 0's
    relative bias of ``j - i`` over the real keys with ``|i - j| <= R``, jointly with (transient-global) the ``S``
    summary keys ``k(global_input_layer_norm(sum of the block's hidden states))`` + layer 0's global bias of
    ``s - block(i)``; computed densely from the normed hidden states each attention module received. Masked queries'
    rows are 0."""
    mods = [m for m in model.modules() if type(m).__name__ in MODULES]
    seen = []
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((mod, (args[0] if args else kwargs["hidden_states"]).detach().clone())),
        with_kwargs=True) for m in mods]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    assert [m for m, _ in seen] == mods
    first = mods[0]
    transient = type(first).__name__ == "LongT5TransientGlobalAttention"
    n = int(inputs["input_ids"].shape[1])
    real = inputs["attention_mask"][0].bool()
    m = int(real.sum())
    assert bool(real[:m].all()), "reference handles trailing padding only"
    pos = torch.arange(n)
    allowed = ((pos[None, :] - pos[:, None]).abs() <= R) & real[None, :] & real[:, None]
    with torch.no_grad():
        bias = first.relative_attention_bias.weight[_bucket(first, pos[None, :] - pos[:, None])].permute(2, 0, 1)
        S = m // G if transient else 0
        block = torch.clamp(pos // G, max=S - 1)  # orphans of a last partial block join the block before
        if transient and S:
            side_bias = first.global_relative_attention_bias.weight[
                _bucket(first, torch.arange(S)[None, :] - block[:, None])].permute(2, 0, 1)  # [H, n, S]
        out = []
        for mod, hidden in seen:
            h = hidden[0]
            H, d = mod.n_heads, mod.key_value_proj_dim
            q = mod.q(h).view(n, H, d).transpose(0, 1)
            k = mod.k(h).view(n, H, d).transpose(0, 1)
            scores = (q @ k.transpose(1, 2) + bias).masked_fill(~allowed, float("-inf"))
            if S:
                sums = torch.stack([h[:m][block[:m] == s].sum(0) for s in range(S)])  # [S, D]
                ks = mod.k(mod.global_input_layer_norm(sums)).view(S, H, d).transpose(0, 1)
                scores = torch.cat([scores, q @ ks.transpose(1, 2) + side_bias], -1)
            p = torch.softmax(scores, -1)
            p[:, ~real] = 0
            out.append(p)
    return torch.stack(out), S


def _band_of(dense: torch.Tensor, n: int) -> torch.Tensor:
    """The ``[L, H, n, 2R+1]`` band of dense ``[L, H, n, >= n]`` maps, by plain indexing."""
    band = torch.zeros(*dense.shape[:2], n, 2 * R + 1)
    for i in range(n):
        for o in range(2 * R + 1):
            j = i + o - R
            if 0 <= j < n:
                band[:, :, i, o] = dense[:, :, i, j]
    return band


CASES = [("local", 11, None), ("local", 13, None), ("local", 13, 10), ("transient-global", 11, None),
         ("transient-global", 13, None), ("transient-global", 13, 10), ("transient-global", 3, None)]


@pytest.mark.parametrize("kind,n,real", CASES)
def test_band_is_the_dense_recomputation(kind, n, real):
    from attnviz.longt5 import capture_longt5_encoder

    model = _model(kind)
    inputs = _inputs(n, real)
    band, _ = capture_longt5_encoder(model, inputs)
    ref, S = reference(model, inputs)
    assert float(ref[..., :n].std()) > 0.05  # varied probabilities: a misplaced one would show
    assert band.kind == "encoder" and band.n == n and band.window == (R, R) and band.global_index == ()
    assert band.local.shape == (2, 2, n, 2 * R + 1) and band.local.dtype == torch.float32
    assert band.half_width == R
    torch.testing.assert_close(band.local, _band_of(ref, n), atol=1e-5, rtol=0)
    if kind == "local":
        assert band.side_keys is None and band.side_spans == ()
    else:
        assert band.side_keys.shape == (2, 2, n, S)
        torch.testing.assert_close(band.side_keys, ref[..., n:], atol=1e-5, rtol=0)
        m = n if real is None else real
        spans = [(s * G, (s + 1) * G) for s in range(m // G)]
        if spans:
            spans[-1] = (spans[-1][0], m)
        assert band.side_spans == tuple(spans)
    # every stored probability is the model's; whatever it attends is stored: rows sum to 1, masked rows to 0
    real_rows = torch.arange(n) < (n if real is None else real)
    sums = band.row_sums()
    torch.testing.assert_close(sums[..., real_rows], torch.ones_like(sums[..., real_rows]), atol=1e-5, rtol=0)
    assert float(sums[..., ~real_rows].abs().sum()) == 0.0
    # the band never leaves [0, n) nor the real tokens; the dense view is the reference
    dense = band.dense()
    assert dense.shape == (2, 2, n, n + S)
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=0)
    for i in range(n):
        for o in range(2 * R + 1):
            j = i + o - R
            if not (0 <= j < n and real_rows[j] and real_rows[i]):
                assert float(band.local[:, :, i, o].abs().max()) == 0.0, (i, o)


@pytest.mark.parametrize("kind", ["local", "transient-global"])
def test_band_equals_eager_blocked_maps(kind):
    """Eager output_attentions: [1, nb, H, bl, 3bl (+ N // G)] per layer; block b's query j, key column c is position
    (b - 1) * bl + c, summary column 3bl + s is summary s."""
    from attnviz.longt5 import band_from_blocked, capture_longt5_encoder

    n = 13
    model = _model(kind)
    inputs = _inputs(n)
    band, _ = capture_longt5_encoder(model, inputs)
    ref, S = reference(model, inputs)
    with torch.no_grad():
        eager = model(**inputs, output_attentions=True).encoder_attentions
    nb = -(-n // BL)
    assert [tuple(a.shape) for a in eager] == [(1, nb, 2, BL, 3 * BL + n // G if kind != "local" else 3 * BL)] * 2
    for layer, a in enumerate(eager):
        total = a[0].sum(-1)  # rows of block padding (past n) spread over masked columns: never stored
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-5, rtol=0)
        for i in range(n):
            b, jq = divmod(i, BL)
            for c in range(3 * BL):
                j = (b - 1) * BL + c
                if abs(j - i) <= R and 0 <= j < n:
                    torch.testing.assert_close(band.local[layer, :, i, j - i + R], a[0, b, :, jq, c], atol=0, rtol=0)
                    torch.testing.assert_close(ref[layer, :, i, j], a[0, b, :, jq, c], atol=1e-5, rtol=0)
                else:
                    assert float(a[0, b, :, jq, c].abs().max()) == 0.0  # what the band drops is exactly 0
            for s in range(S):
                torch.testing.assert_close(band.side_keys[layer, :, i, s], a[0, b, :, jq, 3 * BL + s], atol=0, rtol=0)
    again = band_from_blocked(eager, n, R, G if kind != "local" else None, inputs["attention_mask"])
    assert torch.equal(again.local, band.local) and again.side_spans == band.side_spans
    if kind != "local":
        assert torch.equal(again.side_keys, band.side_keys)


@pytest.mark.parametrize("kind", ["local", "transient-global"])
@pytest.mark.parametrize("cls", ["LongT5ForConditionalGeneration", "LongT5Model", "LongT5EncoderModel"])
def test_outputs_are_a_plain_forward_and_hooks_go(kind, cls):
    from attnviz.longt5 import capture_longt5_encoder

    model = _model(kind, cls)
    inputs = _inputs(11, decoder=cls != "LongT5EncoderModel")
    lengths = []  # what each encoder layer's attention wrapper returns: (hidden, position_bias), no probabilities
    wrappers = [m for m in model.modules()
                if type(m).__name__ in ("LongT5LayerLocalSelfAttention", "LongT5LayerTransientGlobalSelfAttention")]
    hooks = [w.register_forward_hook(lambda mod, args, output: lengths.append(len(output))) for w in wrappers]
    try:
        band, out = capture_longt5_encoder(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    assert lengths == [2, 2]
    with torch.no_grad():
        plain = model(**inputs)
    for key in plain.keys():
        if isinstance(plain[key], torch.Tensor):
            assert torch.equal(out[key], plain[key]), key
    assert getattr(out, "encoder_attentions", None) is None and getattr(out, "attentions", None) is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    ref, _ = reference(model, inputs)
    torch.testing.assert_close(band.dense(), ref, atol=1e-5, rtol=0)
    # a caller asking for output_attentions still gets them (the hook strips only what it forced)
    band2, out2 = capture_longt5_encoder(model, {**inputs, "output_attentions": True})
    maps = out2.attentions if cls == "LongT5EncoderModel" else out2.encoder_attentions
    assert maps is not None and len(maps) == 2 and maps[0].dim() == 5
    assert torch.equal(band2.local, band.local)


def test_long_input_is_linear_in_n():
    from attnviz.longt5 import capture_longt5_encoder

    n = 1001
    band, _ = capture_longt5_encoder(_model("transient-global", "LongT5EncoderModel"), _inputs(n, decoder=False))
    S = n // G
    assert band.local.shape == (2, 2, n, 2 * R + 1) and band.side_keys.shape == (2, 2, n, S)
    assert band.nbytes == 2 * 2 * n * (2 * R + 1 + S) * 4
    sums = band.row_sums()
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    assert band.side_spans[0] == (0, G) and band.side_spans[-1] == ((S - 1) * G, n)


def test_blocked_to_band_refuses_what_it_cannot_store():
    from attnviz.errors import AttentionRefused
    from attnviz.longt5 import blocked_to_band

    n, H = 6, 2
    nb = -(-n // BL)
    blocked = torch.zeros(nb, H, BL, 3 * BL + 1)
    for i in range(n):  # query i: all of its weight on itself (column bl + j)
        b, j = divmod(i, BL)
        blocked[b, :, j, BL + j] = 1.0
    local, side = blocked_to_band(blocked, n, R)
    assert side is None and torch.equal(local[..., R], torch.ones(H, n)) and float(local.sum()) == H * n
    local, side = blocked_to_band(blocked[None], n, R, num_side=1)
    assert side.shape == (H, n, 1) and float(side.sum()) == 0.0
    bad = blocked.clone()
    bad[0, :, 0, 0] = 0.5  # query 0 on key -4: outside the window of radius 3
    with pytest.raises(AttentionRefused, match="outside the window"):
        blocked_to_band(bad, n, R)
    bad = blocked.clone()
    bad[0, :, 0, 3 * BL] = 0.5  # on a summary key that is not kept
    with pytest.raises(AttentionRefused, match="outside the window"):
        blocked_to_band(bad, n, R, num_side=0)
    blocked_to_band(bad, n, R, num_side=1)
    bad = blocked.clone()
    bad[1, :, 1, BL + 1 + 2] = 0.5  # query 5 on key 7: past n (block padding)
    with pytest.raises(AttentionRefused):
        blocked_to_band(bad, n, R)
    with pytest.raises(AttentionRefused, match="does not match"):
        blocked_to_band(blocked, n, R + 1)
    with pytest.raises(AttentionRefused, match="does not match"):
        blocked_to_band(blocked, n + BL, R)


def test_capture_refusals_leave_no_hooks():
    from attnviz.errors import ModelError, UsageError
    from attnviz.longt5 import capture_longt5_encoder

    model = _model("local")
    inputs = _inputs(9)
    with torch.no_grad():
        enc = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    with pytest.raises(ModelError, match="did not run"):
        capture_longt5_encoder(model, {**inputs, "encoder_outputs": enc})
    with pytest.raises(UsageError, match="batch"):
        capture_longt5_encoder(model, {k: v.repeat(2, 1) for k, v in inputs.items()})
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    import transformers as tf

    torch.manual_seed(0)
    t5 = tf.T5Model(tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=1, num_heads=2)).eval()
    with pytest.raises(ModelError, match="no LongT5"):
        capture_longt5_encoder(t5, inputs)


# ---------------------------------------------------------------------------
# what attnviz's dense capture does with LongT5 today (its decoder is ordinary T5 attention)


@pytest.mark.parametrize("kind", ["local", "transient-global"])
def test_dense_capture_refuses_the_encoder_and_gets_decoder_and_cross_exactly(kind):
    from attnviz.capture import FULL, capture

    from attnviz.errors import AttentionRefused

    model = _model(kind)
    inputs = _inputs(11)
    with pytest.raises(AttentionRefused, match="band or block layout.*capture_band"):  # never the decoder alone, silently
        capture(model, inputs, FULL)
    with torch.no_grad():
        ref = model(**inputs, output_attentions=True)
        encoded = model.get_encoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    cap = capture(model, {"encoder_outputs": encoded, "attention_mask": inputs["attention_mask"],
                          "decoder_input_ids": inputs["decoder_input_ids"]}, FULL)  # the encoder ran elsewhere
    assert set(cap.attention) == {"decoder", "cross"}
    for name, maps in (("decoder", ref.decoder_attentions), ("cross", ref.cross_attentions)):
        torch.testing.assert_close(cap.attention[name].full, torch.stack([a[0] for a in maps]), atol=1e-6, rtol=0)
    assert cap.attention["decoder"].causal


@pytest.mark.parametrize("kind,width", [("local", 3 * BL), ("transient-global", 3 * BL + 11 // G)])
def test_eager_capture_refuses_the_blocked_encoder_maps(kind, width):
    from attnviz.capture import FULL, capture_eager
    from attnviz.errors import AttentionRefused

    with pytest.raises(AttentionRefused, match=rf"\[{BL}, {width}\] per head"):
        capture_eager(_model(kind), _inputs(11), FULL)


# ---------------------------------------------------------------------------
# Funnel and Nystromformer: what their eager attention returns (attnviz refuses both in the CLI, SPARSE_TEXT)


def _funnel(cls: str = "FunnelModel"):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.FunnelConfig(vocab_size=64, block_sizes=[1, 1, 1], d_model=32, n_head=2, d_head=8, d_inner=48,
                          num_decoder_layers=1)
    return getattr(tf, cls)(cfg).eval()


def test_funnel_eager_maps_are_probabilities_over_pooled_positions():
    """Funnel (pool_q_only, separate_cls, truncate_seq: the defaults) mean-pools the queries at the first layer of
    every block after the first: that map is [N_b, N_(b-1)] (keys not yet pooled), the block's later layers
    [N_b, N_b]; FunnelModel's decoder layers are [N, N] again. Rows sum to 1 (a real softmax), but a pooled position
    is the mean of 2 previous positions (<cls> kept apart, the last position dropped): not a token."""
    model = _funnel()
    ids = torch.randint(2, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    seen = {}
    hook = model.encoder.blocks[1][0].attention.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(query=args[0].detach().clone(), key=args[1].detach().clone()),
        with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_attentions=True)
    finally:
        hook.remove()
    shapes = [tuple(a.shape) for a in out.attentions]
    assert shapes == [(1, 2, 9, 9), (1, 2, 5, 9), (1, 2, 3, 5), (1, 2, 9, 9)]  # 3 encoder blocks, 1 decoder layer
    for a in out.attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)), atol=1e-5, rtol=0)
    x = seen["key"][0]  # block 1's first layer: unpooled keys, pooled queries
    pooled = torch.stack([x[0], (x[1] + x[2]) / 2, (x[3] + x[4]) / 2, (x[5] + x[6]) / 2, x[7]])  # x[8] dropped
    torch.testing.assert_close(seen["query"][0], pooled, atol=1e-6, rtol=0)


def test_funnel_capture_refuses_in_one_line():
    from attnviz.capture import FULL, capture
    from attnviz.errors import AttentionRefused

    with pytest.raises(AttentionRefused, match=r"differ in shape \(9x9, 5x9, 3x5\): later layers attend over pooled"):
        capture(_funnel("FunnelForSequenceClassification"), {"input_ids": torch.randint(2, 64, (1, 9))}, FULL)


def _nystromformer(landmarks: int, seq_len: int, init: float = 0.5):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.NystromformerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=48, num_landmarks=landmarks, segment_means_seq_len=seq_len,
                                 max_position_embeddings=64, conv_kernel_size=5, initializer_range=init)
    return tf.NystromformerModel(cfg).eval()


def test_nystromformer_landmarks_have_no_token_map():
    """With num_landmarks < segment_means_seq_len the model computes softmax kernels query->landmarks [N, m],
    landmarks->landmarks [m, m] and landmarks->tokens [m, N] and mixes the values as (K1 @ pinv~(K2)) @ (K3 @ V);
    output_attentions is K1 @ pinv~(K2), [N, m] per head (pinv~: 6 Newton iterations), with negative entries and rows
    that need not sum to 1. No [N, N] probability map exists (the input must be exactly segment_means_seq_len long)."""
    from attnviz.capture import FULL, capture
    from attnviz.errors import AttentionRefused

    model = _nystromformer(4, 16)
    ids = torch.randint(2, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    a = torch.stack([x[0] for x in out.attentions])
    assert a.shape == (2, 2, 16, 4)
    assert float(a.min()) < -1e-3 and float((a.sum(-1) - 1).abs().max()) > 1e-3
    with pytest.raises(AttentionRefused, match=r"\[16, 4\] per head"):
        capture(model, {"input_ids": ids}, FULL)
    with pytest.raises(RuntimeError, match="invalid for input"):  # any other length: the model itself fails
        with torch.no_grad():
            model(input_ids=ids[:, :9])


def test_nystromformer_without_landmarks_is_exact_softmax():
    """num_landmarks == segment_means_seq_len (the config default, 64 and 64): plain softmax(q k^T / sqrt(d)) over
    the real keys, any length; attnviz's capture (eager fallback) returns it exactly. (Its depthwise convolution
    over the values, conv_kernel_size, mixes tokens outside the attention map.)"""
    from attnviz.capture import FULL, capture

    model = _nystromformer(16, 16)
    ids = torch.randint(2, 64, (1, 9), generator=torch.Generator().manual_seed(0))
    seen = []
    mods = [m for m in model.modules() if type(m).__name__ == "NystromformerSelfAttention"]
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].detach().clone()))) for m in mods]
    try:
        cap = capture(model, {"input_ids": ids}, FULL)
    finally:
        for h in hooks:
            h.remove()
    ref = []
    with torch.no_grad():
        for mod, hidden in seen:
            q = mod.query(hidden[0]).view(9, 2, 16).transpose(0, 1)
            k = mod.key(hidden[0]).view(9, 2, 16).transpose(0, 1)
            ref.append(torch.softmax(q @ k.transpose(1, 2) / 4.0, -1))
    torch.testing.assert_close(cap.attention["self"].full, torch.stack(ref), atol=1e-5, rtol=0)
