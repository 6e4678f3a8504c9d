"""Tiny random speech models built from configs: a Whisper with a 4 s window and a byte-level tokenizer, and
wav2vec2-style encoders (with a CTC head where the family has one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

ENCODER_KINDS = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat")
RATE = 16000
#: Whisper's window in the tiny model (seconds): 400 mel frames, 200 encoder frames.
CHUNK_S = 4
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
            "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
ALIGNMENT_HEADS = [[1, 0], [1, 1]]


def _encoder_config(kind: str):
    import transformers as T

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, conv_dim=(16, 16, 16),
                 conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                 vocab_size=12)
    cls = {"wav2vec2": T.Wav2Vec2Config, "hubert": T.HubertConfig, "wavlm": T.WavLMConfig,
           "data2vec-audio": T.Data2VecAudioConfig, "unispeech": T.UniSpeechConfig, "unispeech-sat": T.UniSpeechSatConfig}[kind]
    return cls(**small)


def _ctc_vocab(folder: Path):
    import transformers as T

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9, "I": 10, "H": 11}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return T.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"))


def make_encoder(root: Path, kind: str, seed: int = 0) -> Path:
    """Save a tiny random ``kind`` speech encoder (wav2vec2 with a CTC head and tokenizer) into ``root/kind``."""
    import transformers as T

    folder = Path(root) / kind
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    config = _encoder_config(kind)
    model = (T.Wav2Vec2ForCTC(config) if kind == "wav2vec2" else T.AutoModel.from_config(config)).eval()
    model.save_pretrained(folder)
    T.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0, do_normalize=True,
                               return_attention_mask=False).save_pretrained(folder)
    if kind == "wav2vec2":
        _ctc_vocab(folder).save_pretrained(folder)
    return folder


def whisper_tokenizer(folder: Path):
    """A byte-level BPE Whisper tokenizer with a handful of merges and Whisper's special tokens."""
    from transformers import WhisperTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges = []
    for pair in (("Ġ", "h"), ("e", "l"), ("Ġ", "w"), ("l", "o")):
        vocab["".join(pair)] = len(vocab)
        merges.append(" ".join(pair))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token=SPECIALS[0],
                           bos_token=SPECIALS[0], eos_token=SPECIALS[0], pad_token=SPECIALS[0])
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    return tok


def make_whisper(root: Path, seed: int = 0, alignment_heads=True, multilingual: bool = False) -> Path:
    """Save a tiny random Whisper (2+2 layers x 4 heads, d_model 32, 16 mel bins, 4 s window) with its feature
    extractor, tokenizer and a generation config naming :data:`ALIGNMENT_HEADS`; English-only, or ``multilingual``
    (it knows ``<|en|>``, detects the language when none is given and takes ``--task``)."""
    import transformers as T

    folder = Path(root) / ("whisper" + ("" if alignment_heads else "-noheads") + ("-multilingual" if multilingual else ""))
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True)
    tok = whisper_tokenizer(folder)
    ids = tok.convert_tokens_to_ids(SPECIALS)
    eos, sot, notimestamps = ids[0], ids[1], ids[-1]
    vocab_size = len(tok) + 3
    config = T.WhisperConfig(vocab_size=vocab_size, num_mel_bins=16, encoder_layers=2, decoder_layers=2,
                             encoder_attention_heads=4, decoder_attention_heads=4, d_model=32, encoder_ffn_dim=64,
                             decoder_ffn_dim=64, max_source_positions=CHUNK_S * 50, max_target_positions=64,
                             decoder_start_token_id=sot, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                             begin_suppress_tokens=[], suppress_tokens=[])
    torch.manual_seed(seed)
    model = T.WhisperForConditionalGeneration(config).eval()
    gc = model.generation_config
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id, gc.bos_token_id = sot, eos, eos, eos
    gc.no_timestamps_token_id = notimestamps
    gc.is_multilingual = multilingual
    if multilingual:
        gc.lang_to_id = {"<|en|>": ids[2]}
        gc.task_to_id = {"translate": ids[3], "transcribe": ids[4]}
    gc.max_length = 24
    gc.suppress_tokens, gc.begin_suppress_tokens = ids[1:], []  # the random model writes byte tokens, not specials
    gc._from_model_config = False  # else from_pretrained rebuilds the generation config from config.json
    if alignment_heads:
        gc.alignment_heads = ALIGNMENT_HEADS
    model.save_pretrained(folder)
    T.WhisperFeatureExtractor(feature_size=16, sampling_rate=RATE, chunk_length=CHUNK_S).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tone(seconds: float = 1.5, rate: int = RATE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A chirp with a little noise: float32 ``[n, channels]`` (channels differ in phase and level)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    base = 0.4 * np.sin(2 * np.pi * (200 + 300 * t) * t) + 0.05 * rng.standard_normal(t.size)
    cols = [base * (1.0 - 0.3 * c) + 0.1 * np.sin(2 * np.pi * 440 * t + c) for c in range(channels)]
    return np.stack(cols, axis=1).astype(np.float32)


def write_clip(path: Path, seconds: float = 1.5, rate: int = RATE, channels: int = 1, fmt: str | None = None) -> Path:
    import soundfile as sf

    sf.write(str(path), tone(seconds, rate, channels), rate, format=fmt)
    return path
