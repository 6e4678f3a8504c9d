"""``attnviz generate`` / :func:`attnviz.generate.attend_generation`: every step's captured rows equal eager attention.

The reference is transformers' eager ``output_attentions`` of ONE forward over the
prompt + generated tokens (encoder-decoder: source, and decoder start token +
generated tokens): generated token ``i``'s row is that forward's row at the same
position.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from tiny import TEXT

TOL = 1e-5
KINDS = ("gpt2", "llama", "mistral", "gemma2", "t5", "bart")


def _eager(path, result):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if result.encoder_decoder else AutoModelForCausalLM
    model = auto.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        if result.encoder_decoder:
            dec = [model.config.decoder_start_token_id, *result.generated_ids]
            out = model(input_ids=torch.tensor([result.prompt_ids]), decoder_input_ids=torch.tensor([dec]), output_attentions=True)
            return torch.stack([a[0] for a in out.decoder_attentions]), torch.stack([a[0] for a in out.cross_attentions])
        ids = torch.tensor([list(result.prompt_ids) + list(result.generated_ids)])
        out = model(input_ids=ids, output_attentions=True)
        return torch.stack([a[0] for a in out.attentions]), None


def _diff(a, b):
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("kind", KINDS)
def test_steps_equal_eager_full_forward(lm_models, kind):
    from attnviz.generate import attend_generation, load_generation_model

    path = lm_models(kind)
    tm = load_generation_model(str(path))
    result = attend_generation(TEXT, tm, max_new_tokens=6, stop_at_eos=False)
    T, C = result.num_generated, result.context_length
    assert T == 6
    assert result.backend == "sdpa+attnviz"
    ref_self, ref_cross = _eager(path, result)
    L, H = ref_self.shape[:2]
    assert result.attentions.shape == (L, H, T, C + T)
    rows = ref_self[:, :, C : C + T, :]  # generated token i sits at position C + i
    assert _diff(result.attentions, rows) <= TOL
    # what a step could not see is exactly 0 (later tokens; outside a sliding window)
    for i in range(T):
        assert float(result.attentions[:, :, i, C + i + 1 :].abs().sum()) == 0.0
    assert torch.allclose(result.attentions.sum(-1), torch.ones(L, H, T), atol=1e-5)
    if kind == "mistral":  # sliding window 4 < sequence: early keys really are cut off
        assert float(result.attentions[:, :, -1, : C + T - 4].abs().sum()) == 0.0
    if result.encoder_decoder:
        assert result.cross_attentions is not None
        assert _diff(result.cross_attentions, ref_cross[:, :, 1 : 1 + T, :]) <= TOL
    else:
        assert result.cross_attentions is None
    assert len(result.probabilities) == T and all(0 < p <= 1 for p in result.probabilities)


@pytest.mark.parametrize("kind", ("gpt2", "t5"))
def test_greedy_tokens_and_probabilities_match_generate(lm_models, kind):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from attnviz.generate import attend_generation, load_generation_model

    path = lm_models(kind)
    tm = load_generation_model(str(path))
    result = attend_generation(TEXT, tm, max_new_tokens=5, stop_at_eos=False)
    auto = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    model = auto.from_pretrained(path).eval()
    ids = torch.tensor([result.prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    seq = out.sequences[0].tolist()
    new = seq[1:] if kind == "t5" else seq[len(result.prompt_ids):]
    assert list(result.generated_ids) == new
    want = [float(torch.softmax(s[0], -1)[t]) for s, t in zip(out.logits, new)]
    assert max(abs(a - b) for a, b in zip(result.probabilities, want)) < 1e-5


def test_sampling_is_reproducible_and_stops_at_eos(lm_models):
    from attnviz.generate import attend_generation, load_generation_model

    tm = load_generation_model(str(lm_models("llama")))
    a = attend_generation(TEXT, tm, max_new_tokens=8, sample=True, temperature=1.5, top_p=0.9, seed=3, stop_at_eos=False)
    b = attend_generation(TEXT, tm, max_new_tokens=8, sample=True, temperature=1.5, top_p=0.9, seed=3, stop_at_eos=False)
    c = attend_generation(TEXT, tm, max_new_tokens=8, sample=True, temperature=1.5, top_p=0.9, seed=4, stop_at_eos=False)
    assert a.generated_ids == b.generated_ids and torch.equal(a.attentions, b.attentions)
    assert a.generated_ids != c.generated_ids
    assert a.sampling == {"do_sample": True, "temperature": 1.5, "top_p": 0.9, "seed": 3}
    # make the 3rd greedy token an EOS: generation stops there and keeps it
    greedy = attend_generation(TEXT, tm, max_new_tokens=6, stop_at_eos=False)
    tm.model.generation_config.eos_token_id = greedy.generated_ids[2]
    try:
        stopped = attend_generation(TEXT, tm, max_new_tokens=6)
    finally:
        tm.model.generation_config.eos_token_id = 2
    first = greedy.generated_ids.index(greedy.generated_ids[2])
    assert stopped.stopped_at_eos and stopped.num_generated == first + 1
    C = stopped.context_length
    assert stopped.attentions.shape[2:] == (first + 1, C + first + 1)
    assert torch.equal(stopped.attentions, greedy.attentions[:, :, : first + 1, : C + first + 1])


def test_bad_settings(lm_models):
    from attnviz.errors import UsageError
    from attnviz.generate import attend_generation, load_generation_model

    tm = load_generation_model(str(lm_models("gpt2")))
    for kwargs, msg in (({"max_new_tokens": 0}, "at least 1"), ({"sample": True, "temperature": 0}, "temperature"),
                        ({"sample": True, "top_p": 1.5}, "top-p"), ({"chat": True}, "chat template")):
        with pytest.raises(UsageError, match=msg):
            attend_generation(TEXT, tm, **kwargs)
    with pytest.raises(UsageError, match="empty"):
        attend_generation("", tm)
    served = attend_generation(TEXT, tm, max_new_tokens=500, stop_at_eos=False)  # more than the 128 positions: served
    assert served.prompt_length + served.num_generated == 128 and "generating at most" in served.notice


def test_views_draw_the_captured_numbers(lm_models):
    import numpy as np

    from attnviz.analysis.generation import sink_share
    from attnviz.generate import attend_generation, load_generation_model
    from attnviz.render.common import figure_text
    from attnviz.render.generate import generation_head_view, generation_map, sink_view

    tm = load_generation_model(str(lm_models("llama")))
    r = attend_generation(TEXT, tm, max_new_tokens=5, stop_at_eos=False)
    C, T = r.context_length, r.num_generated
    fig = generation_map(r, layer=1, head=2)
    img = next(a for ax in fig.axes for a in ax.get_images() if a.get_gid() == "attention")
    data = img.get_array()
    assert np.allclose(data.data, r.attentions[1, 2].numpy(), atol=1e-7)
    assert data.mask[0, C + 1] and not data.mask[0, C]  # a step cannot see later tokens: masked (hatched)
    assert any(l.get_gid() == "boundary" for ax in fig.axes for l in ax.get_lines())
    assert "layer 1, head 2" in figure_text(fig)
    fig = generation_map(r, layer=-1, fusion="max")
    img = next(a for ax in fig.axes for a in ax.get_images() if a.get_gid() == "attention")
    assert np.allclose(img.get_array().data, r.attentions[-1].amax(0).numpy(), atol=1e-7)
    fig = sink_view(r)
    img = next(a for ax in fig.axes for a in ax.get_images() if a.get_gid() == "sink")
    assert np.allclose(img.get_array(), sink_share(r).numpy(), atol=1e-7)
    assert np.allclose(sink_share(r).numpy(), r.attentions[:, :, :, 0].mean(1).numpy())
    fig = generation_head_view(r, 2, layer=0, head=1)
    focus = next(c for ax in fig.axes for c in ax.collections if c.get_gid() == "focus-links")
    assert len(focus.get_segments()) == min(10, C + 3)  # its 10 strongest visible keys


def test_models_without_the_attention_interface_fall_back_to_eager_exactly(tmp_path):
    """BLOOM (ALiBi) does not dispatch through transformers' AttentionInterface: every step falls back to eager."""
    import transformers as tf

    from attnviz.generate import attend_generation, load_generation_model
    from tiny import bpe_tokenizer

    tok = bpe_tokenizer()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(tf.BloomConfig(vocab_size=len(tok), hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2))
    model.save_pretrained(tmp_path / "bloom")
    tok.save_pretrained(tmp_path / "bloom")
    r = attend_generation(TEXT, load_generation_model(str(tmp_path / "bloom")), max_new_tokens=4, stop_at_eos=False)
    assert r.backend == "eager" and "eager" in r.notice
    ref, _ = _eager(tmp_path / "bloom", r)
    C = r.context_length
    assert _diff(r.attentions, ref[:, :, C : C + 4]) <= TOL
