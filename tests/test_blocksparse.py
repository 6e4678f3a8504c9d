"""BigBird / BigBirdPegasus block-sparse attention: the capture stores every probability the model computes, sparsely,
and nothing else; checked against an independent dense recomputation (written here in plain torch from the paper's /
transformers' semantics) from each layer's own query/key projections of the hidden states it received and the random
layout it drew, both recorded by this test's own hooks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from attnviz.blocksparse import BlockAttention, capture_block_sparse
from attnviz.errors import AttentionRefused, UsageError

BS, R = 4, 2  # block size, random blocks: block_sparse needs n > (5 + 2R) * BS = 36


def _bigbird(cls: str = "BigBirdForMaskedLM", r: int = R, attention_type: str = "block_sparse"):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BigBirdConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=128, block_size=BS, num_random_blocks=r,
                           attention_type=attention_type, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           sep_token_id=3, initializer_range=0.2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, num_labels=3)
    return getattr(tf, cls)(cfg).eval()


def _pegasus():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BigBirdPegasusConfig(vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                                  decoder_ffn_dim=37, max_position_embeddings=128, block_size=BS, num_random_blocks=1,
                                  attention_type="block_sparse", pad_token_id=0, init_std=0.2, dropout=0.0,
                                  attention_dropout=0.0)
    return tf.BigBirdPegasusForConditionalGeneration(cfg).eval()


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 50, (1, n), generator=g)


def _sparse_modules(model):
    return [m for m in model.modules() if type(m).__name__.endswith("BlockSparseAttention")]


def _capture_with_reference_hooks(model, inputs):
    """capture_block_sparse, with this test's own hooks on the same forward: each block-sparse module's input hidden
    states and value / context outputs (forward hooks) and the random layout it gathered (a wrapper of
    ``torch_gather_b2``, a different function from the one the capture wraps)."""
    seen = []  # (module, hidden [N_pad, D], value [N_pad, H*d], context [N_pad, H*d], eager [H, N_pad, N_pad])
    layouts = {}
    values = {}
    hooks, patched = [], []
    for m in _sparse_modules(model):
        hooks.append(m.value.register_forward_hook(lambda lin, a, out, m=m: values.__setitem__(id(m), out[0])))
        hooks.append(m.register_forward_hook(
            lambda mod, args, out: seen.append((mod, args[0][0], values[id(mod)], out[0][0], out[1][0]))))
        original = m.torch_gather_b2

        def gather(params, indices, _original=original, _m=m):
            layouts[id(_m)] = indices[0].clone()  # [H, nb-2, r]
            return _original(params, indices)

        m.torch_gather_b2 = gather
        patched.append(m)
    try:
        captured, outputs = capture_block_sparse(model, inputs)
    finally:
        for h in hooks:
            h.remove()
        for m in patched:
            del m.torch_gather_b2
    return captured, outputs, [(mod, hid, val, ctx, eag, layouts[id(mod)]) for mod, hid, val, ctx, eag in seen]


def reference(module, hidden: torch.Tensor, rand_attn: torch.Tensor, n: int,
              attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[H, N_pad, N_pad]`` probabilities of one layer (Zaheer et al. 2020, ITC; transformers' semantics) and the
    multiplicity of each (query, key): how many of the query's softmax slots hold that key.

    Query blocks 0 and nb-1 attend every key once. Query block i (1 <= i <= nb-2) attends the key blocks
    {0, nb-1} | {i-1, i, i+1} once each and then each of its random blocks once more (repeats counted), so key j gets
    ``sum over its slots of exp(s_j + penalty_slot)``, normalised over all slots. Scores ``q.k / sqrt(d)``; a slot's
    penalty is -10000 when its key is masked (padding past ``n`` or ``attention_mask`` 0) or, on the window slots of
    blocks 2 .. nb-3 and on random slots, when the query is masked.
    """
    H, d = module.num_attention_heads, module.attention_head_size
    n_pad = hidden.shape[0]
    nb = n_pad // BS
    mask = torch.zeros(n_pad)
    mask[:n] = 1 if attention_mask is None else attention_mask.reshape(-1).float()
    with torch.no_grad():
        q = module.query(hidden).view(n_pad, H, d).transpose(0, 1)
        k = module.key(hidden).view(n_pad, H, d).transpose(0, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores - scores.max(-1, keepdim=True).values
    weights = torch.zeros(H, n_pad, n_pad)
    mult = torch.zeros(H, n_pad, n_pad)

    def add(h, rows, b, by_query):
        keys = slice(b * BS, (b + 1) * BS)
        keep = mask[keys][None, :] * (mask[rows][:, None] if by_query else 1.0)
        weights[h, rows, keys] += torch.exp(scores[h, rows, keys] + (1.0 - keep) * -10000.0)
        mult[h, rows, keys] += 1

    for h in range(H):
        for i in range(nb):
            rows = slice(i * BS, (i + 1) * BS)
            if i in (0, nb - 1):
                for b in range(nb):
                    add(h, rows, b, False)
                continue
            for b in {0, nb - 1, i - 1, i, i + 1}:
                add(h, rows, b, by_query=b not in (0, nb - 1) and 2 <= i <= nb - 3)
            for b in rand_attn[h, i - 1].tolist():
                add(h, rows, b, True)
    return weights / weights.sum(-1, keepdim=True), mult


@pytest.fixture(scope="module")
def eval_run():
    model = _bigbird()
    inputs = {"input_ids": _ids(45)}  # 45 = 11 blocks + 1: padded to 48 (nb = 12)
    captured, outputs, layers = _capture_with_reference_hooks(model, inputs)
    return model, inputs, captured["self"], outputs, layers


def test_eval_layout_is_block_zero_and_recorded(eval_run):
    _, _, att, _, layers = eval_run
    assert att.kind == "self" and att.n == 45 and att.block_size == BS and att.format == "blocks"
    assert (att.num_layers, att.num_heads, att.num_blocks, att.num_random_blocks) == (2, 2, 12, R)
    for layer, (*_, rand) in enumerate(layers):
        assert rand.shape == (2, 10, R) and int(rand.abs().sum()) == 0  # eval: every random block is block 0
        assert torch.equal(att.key_blocks[layer, :, 1:-1, 4:4 + R], rand.long())
    assert (att.key_blocks[:, :, [0, -1]] == -1).all()
    assert att.key_blocks[0, 0, 5].tolist() == [0, 4, 5, 6, 0, 0, 11]
    assert att.key_blocks[0, 0, 1].tolist() == [0, -1, 1, 2, 0, 0, 11]
    assert att.key_blocks[0, 0, 10].tolist() == [0, 9, 10, -1, 0, 0, 11]


def test_every_probability_matches_independent_recomputation(eval_run):
    _, _, att, _, layers = eval_run
    n = att.n
    dense = att.dense()
    assert dense.shape == (2, 2, n, n) and dense.dtype == torch.float32
    for layer, (mod, hidden, _, _, _, rand) in enumerate(layers):
        ref, mult = reference(mod, hidden, rand, n)
        assert (ref[:, :n, n:].sum(-1) == 0).all()  # padding keys: exactly 0 in the reference too
        assert torch.allclose(dense[layer], ref[:, :n, :n], atol=1e-5, rtol=0)
        assert (dense[layer][mult[:, :n, :n] == 0] == 0).all()  # nothing outside the layout
        assert (dense[layer][mult[:, :n, :n] > 0] > 0).all()
        # slot by slot: each stored value is one copy's weight, ref / multiplicity
        for q in range(BS, (att.num_blocks - 1) * BS):
            blocks = att.key_blocks[layer, :, q // BS]  # [H, K]
            for h in range(att.num_heads):
                for s, b in enumerate(blocks[h].tolist()):
                    got = att.values[layer, h, q, s * BS:(s + 1) * BS]
                    if b < 0:
                        assert (got == 0).all()
                        continue
                    keys = torch.arange(b * BS, (b + 1) * BS)
                    real = keys < n
                    want = ref[h, q, keys] / mult[h, q, keys]
                    assert torch.allclose(got[real], want[real], atol=1e-5, rtol=0)
                    assert (got[~real] == 0).all()  # padding keys dropped
        g = list(att.global_index)
        assert g == [0, 1, 2, 3, 44]
        assert torch.allclose(att.global_rows[layer], ref[:, g, :n], atol=1e-5, rtol=0)
        assert (att.values[layer][:, g] == 0).all()


def test_rows_sum_to_one_and_repeats_are_counted(eval_run):
    _, _, att, _, layers = eval_run
    assert torch.allclose(att.row_sums(), torch.ones(2, 2, att.n), atol=1e-5)
    assert torch.allclose(att.dense().sum(-1), torch.ones(2, 2, att.n), atol=1e-5)
    # block 0 is held by 1 + R slots of query block 5 in eval: rows() adds them up
    q = 5 * BS + 1
    one = att.values[0, :, q, :BS]
    assert torch.allclose(att.rows(0, [q])[:, 0, :BS], (1 + R) * one, atol=1e-6)
    assert torch.allclose(att.rows(1, [-1, 3, q]), att.dense([1])[0][:, [att.n - 1, 3, q]])


def test_sparse_rows_reproduce_the_models_context(eval_run):
    """Our rows times the layer's values give exactly the attention output the model computed; the eager map does not
    (it drops the repeated block 0 copies)."""
    _, _, att, _, layers = eval_run
    n = att.n
    for layer, (mod, _, value, context, eager, _) in enumerate(layers):
        H, d = mod.num_attention_heads, mod.attention_head_size
        v = value.view(-1, H, d).transpose(0, 1)[:, :n]  # [H, n, d]; padding keys have weight 0
        ours = (att.dense([layer])[0] @ v).transpose(0, 1).reshape(n, H * d)
        assert torch.allclose(ours, context[:n], atol=1e-5, rtol=0)
        theirs = (eager[:, :n, :n] @ v).transpose(0, 1).reshape(n, H * d)
        assert not torch.allclose(theirs, context[:n], atol=1e-3)


def test_eager_map_complete_parts_agree_and_incomplete_rows_pinned(eval_run):
    _, _, att, _, layers = eval_run
    n, nb = att.n, att.num_blocks
    dense = att.dense()
    for layer, (mod, hidden, _, _, eager, rand) in enumerate(layers):
        _, mult = reference(mod, hidden, rand, n)
        eager = eager[:, :n, :n]
        mult = mult[:, :n, :n]
        once = mult == 1
        assert torch.allclose(eager[once], dense[layer][once], atol=1e-5, rtol=0)
        assert torch.allclose(eager[mult == 0], torch.zeros(()))
        # repeated keys (block 0 in query blocks 1 .. nb-2): eager holds one copy, the model used 1 + R
        rep = mult == 1 + R
        assert int(rep.sum()) == 2 * (nb - 2) * BS * BS
        assert torch.allclose(eager[rep] * (1 + R), dense[layer][rep], atol=1e-5, rtol=0)
        sums = eager.sum(-1)  # [H, n]
        assert torch.allclose(sums[:, :BS], torch.ones(2, BS), atol=1e-5)  # global rows complete
        assert torch.allclose(sums[:, (nb - 1) * BS:], torch.ones(2, n - (nb - 1) * BS), atol=1e-5)
        middle = sums[:, BS:(nb - 1) * BS]
        assert (middle < 0.99).all()  # incomplete: the R extra copies of block 0 are missing
        missing = R * eager[:, BS:(nb - 1) * BS, :BS].sum(-1)
        assert torch.allclose(middle + missing, torch.ones_like(middle), atol=1e-5)
        assert torch.allclose(att.row_sums()[layer, :, BS:(nb - 1) * BS], torch.ones_like(middle), atol=1e-5)
        assert layers[layer][4].shape[-1] == 48 and (layers[layer][4][:, :, n:] == 0).all()  # eager padding keys: 0


def test_outputs_unchanged_and_hooks_removed(eval_run):
    model, inputs, _, outputs, _ = eval_run
    with torch.inference_mode():
        plain = model(**inputs)
    assert torch.equal(outputs.logits, plain.logits)
    for m in _sparse_modules(model):
        assert not m._forward_hooks and not m.query._forward_hooks and not m.key._forward_hooks
        assert "_create_rand_mask_from_inputs" not in m.__dict__


@pytest.mark.parametrize("cls", ["BigBirdModel", "BigBirdForSequenceClassification"])
def test_other_heads_unchanged(cls):
    model = _bigbird(cls)
    inputs = {"input_ids": _ids(48)}  # a block multiple: no padding
    captured, outputs = capture_block_sparse(model, inputs)
    with torch.inference_mode():
        plain = model(**inputs)
    name = "last_hidden_state" if cls == "BigBirdModel" else "logits"
    assert torch.equal(getattr(outputs, name), getattr(plain, name))
    att = captured["self"]
    assert att.n == 48 and att.global_index == tuple(range(4)) + tuple(range(44, 48))
    assert torch.allclose(att.row_sums(), torch.ones(2, 2, 48), atol=1e-5)


def test_masked_tokens_follow_the_models_masking():
    """attention_mask 0 inside the input (a global query, middle queries): masked keys get 0; a masked query's window
    and random slots are penalised as well (its weight goes to the global blocks), exactly as the model does."""
    model = _bigbird()
    mask = torch.ones(1, 45, dtype=torch.long)
    mask[0, [2, 21, 30, 41]] = 0
    inputs = {"input_ids": _ids(45), "attention_mask": mask}
    captured, outputs, layers = _capture_with_reference_hooks(model, inputs)
    att = captured["self"]
    dense = att.dense()
    for layer, (mod, hidden, _, _, _, rand) in enumerate(layers):
        ref, _ = reference(mod, hidden, rand, att.n, mask)
        assert torch.allclose(dense[layer], ref[:, :45, :45], atol=1e-5, rtol=0)
        assert (dense[layer][:, :, [2, 21, 30, 41]] == 0).all()
        assert dense[layer][:, 21, 2 * BS:10 * BS].sum() < 1e-6  # masked middle query: only the global blocks
    assert torch.allclose(att.row_sums(), torch.ones(2, 2, 45), atol=1e-5)
    with torch.inference_mode():
        plain = model(**inputs)
    assert torch.equal(outputs.logits, plain.logits)


def test_disagreement_with_the_model_refused(monkeypatch):
    """The capture checks its recomputation against the map transformers builds and refuses a mismatch."""
    import attnviz.blocksparse as bsp

    real = bsp.block_sparse_probs

    def off(*args, **kwargs):
        table, probs, global_probs = real(*args, **kwargs)
        return table, probs * 0.999, global_probs

    monkeypatch.setattr(bsp, "block_sparse_probs", off)
    model = _bigbird()
    with pytest.raises(AttentionRefused, match="differ from the model"):
        capture_block_sparse(model, {"input_ids": _ids(45)})
    assert not any(m._forward_hooks for m in _sparse_modules(model))


def test_training_layout_is_recorded_and_matches():
    """Training mode: the layout is drawn (seeded by layer index), differs per head, and is what gets stored."""
    model = _bigbird().train()
    inputs = {"input_ids": _ids(45)}
    captured, outputs, layers = _capture_with_reference_hooks(model, inputs)
    att = captured["self"]
    rands = [rand for *_, rand in layers]
    assert all(int(r.sum()) > 0 for r in rands) and not torch.equal(rands[0][0], rands[0][1])
    for layer, (mod, hidden, _, _, eager, rand) in enumerate(layers):
        assert torch.equal(att.key_blocks[layer, :, 1:-1, 4:4 + R], rand.long())
        ref, mult = reference(mod, hidden, rand, att.n)
        assert int(mult.max()) == 1  # no repeats in this layout
        assert torch.allclose(att.dense([layer])[0], ref[:, :att.n, :att.n], atol=1e-5, rtol=0)
        assert torch.allclose(eager[:, :att.n, :att.n], ref[:, :att.n, :att.n], atol=1e-5, rtol=0)  # eager complete
    again, _ = capture_block_sparse(model, inputs)
    assert torch.equal(again["self"].key_blocks, att.key_blocks)  # seeded: the same every training forward


def test_pegasus_encoder():
    model = _pegasus()
    inputs = {"input_ids": _ids(39), "decoder_input_ids": torch.tensor([[2, 5, 6]])}
    captured, outputs, layers = _capture_with_reference_hooks(model, inputs)
    assert set(captured) == {"encoder"}
    att = captured["encoder"]
    assert att.kind == "encoder" and att.n == 39 and att.num_random_blocks == 1
    for layer, (mod, hidden, _, _, _, rand) in enumerate(layers):
        ref, _ = reference(mod, hidden, rand, att.n)
        assert torch.allclose(att.dense([layer])[0], ref[:, :39, :39], atol=1e-5, rtol=0)
    with torch.inference_mode():
        plain = model(**inputs)
    assert torch.equal(outputs.logits, plain.logits)


def test_round_trip_through_safetensors(eval_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    att = eval_run[2]
    tensors = att.to_tensors()
    assert set(tensors) == {"blocks/values", "blocks/key_blocks", "blocks/global_rows"}
    assert tensors["blocks/key_blocks"].dtype == torch.int32
    meta = att.metadata()
    assert meta["layout"] == "blocks" and meta["blocks_kind"] == "self" and meta["n"] == 45
    path = tmp_path / "a.safetensors"
    save_file({**tensors, "attentions_other": torch.zeros(1)}, str(path),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    with safe_open(str(path), "pt") as fh:
        stored = {k: json.loads(v) for k, v in fh.metadata().items()}
    assert stored == meta
    back = BlockAttention.from_tensors(load_file(str(path)), stored)
    assert (back.kind, back.n, back.block_size) == (att.kind, att.n, att.block_size)
    assert back.global_index == att.global_index
    assert torch.equal(back.values, att.values) and torch.equal(back.key_blocks, att.key_blocks)
    assert torch.equal(back.global_rows, att.global_rows) and torch.equal(back.dense(), att.dense())
    half = BlockAttention.from_tensors(att.to_tensors(torch.float16), meta)
    assert torch.allclose(half.dense(), att.dense(), atol=1e-3) and not torch.equal(half.values, att.values)


def test_memory_is_linear(eval_run):
    att = eval_run[2]
    L, H, n, nb, K = 2, 2, 45, 12, 5 + R
    assert att.nbytes == L * H * n * K * BS * 4 + L * H * 5 * n * 4 + L * H * nb * K * 8


def test_short_input_refused_without_switching_the_model():
    model = _bigbird()
    with pytest.raises(AttentionRefused, match="at least 37"):
        capture_block_sparse(model, {"input_ids": _ids(36)})
    assert model.bert.attention_type == "block_sparse" and len(_sparse_modules(model)) == 2
    capture_block_sparse(model, {"input_ids": _ids(37)})  # the shortest length that runs block_sparse


def test_full_attention_model_refused():
    with pytest.raises(AttentionRefused, match="original_full"):
        capture_block_sparse(_bigbird(attention_type="original_full"), {"input_ids": _ids(45)})


def test_batch_refused():
    with pytest.raises(UsageError, match="one sequence"):
        capture_block_sparse(_bigbird(), {"input_ids": torch.cat([_ids(45), _ids(45, 2)])})
