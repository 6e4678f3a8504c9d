"""Benchmark ``attnviz audio`` against plain ``generate`` / a plain forward of the same model (issue 17).

    python benchmarks/audio.py               # Whisper tiny.en (real, ../shared) and a wav2vec2-base-sized encoder
    python benchmarks/audio.py --repeat 1

The clip is 30 s of real speech: the three Asterisk prompts of ``../shared/samples/speech`` (8 kHz) joined with
silences and padded to exactly 30 s (Whisper's whole window). Whisper is the real ``whisper-tiny.en`` in
``../shared/models`` (skipped where it is absent); the encoder is a random wav2vec2 with ``facebook/wav2vec2-base``'s
default config (95 M parameters, 12 layers x 12 heads; the Hub is offline here).

Each run is a whole process. The baseline is what a user writes without attnviz: import transformers, load the model
and its processor (Whisper: feature extractor and tokenizer), read the clip with soundfile, resample with soxr, extract
features, then Whisper: greedy ``model.generate`` with the attention mask and the decoded text
(``return_token_timestamps=True`` in a second row, which is what gives word times without attnviz); encoder: one
forward (``torch.inference_mode``). attnviz is ``python -m attnviz audio CLIP --model F --out TMP`` with the defaults
(spectrogram, encoder layer, alignment and words figures: Whisper; spectrogram and encoder layer: encoders) and with
fewer views (Whisper ``--views alignment,words``: no encoder map is kept; encoder ``--views encoder``). Time is the process's wall time; peak RSS the child's ``ru_maxrss``. The best of ``--repeat`` runs is kept.
Target: within 1.3x the time and 1.2x the peak memory. Results: a table on stdout and ``benchmarks/AUDIO.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _process import one_run  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
WHISPER = SHARED / "models" / "whisper-tiny.en"
SPEECH = SHARED / "samples" / "speech"
TIME_TARGET, MEMORY_TARGET = 1.3, 1.2


PLAIN = """
import sys, torch, soundfile as sf, soxr
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForSpeechSeq2Seq, AutoProcessor
folder, clip, mode = sys.argv[1], sys.argv[2], sys.argv[3]
processor = None if mode == "forward" else AutoProcessor.from_pretrained(folder)
fe = AutoFeatureExtractor.from_pretrained(folder) if processor is None else processor.feature_extractor
data, rate = sf.read(clip, dtype="float32", always_2d=True)
audio = soxr.resample(data.mean(1), rate, fe.sampling_rate, quality="HQ")
if mode == "forward":
    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        model(**fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt"))
else:
    model = AutoModelForSpeechSeq2Seq.from_pretrained(folder).eval()
    batch = fe(audio, sampling_rate=fe.sampling_rate, return_tensors="pt", return_attention_mask=True)
    with torch.inference_mode():
        out = model.generate(batch["input_features"], attention_mask=batch["attention_mask"],
                             return_token_timestamps=(mode == "timestamps"), return_dict_in_generate=True)
    print(processor.batch_decode(out["sequences"], skip_special_tokens=True)[0])
"""


def make_clip(path: Path) -> Path:
    import numpy as np
    import soundfile as sf

    parts, rate = [], 8000
    for name in ("demo-moreinfo", "demo-thanks", "hello-world", "demo-thanks"):
        x, rate = sf.read(str(SPEECH / f"{name}.wav"), dtype="float32")
        parts += [x, np.zeros(int(0.5 * rate), np.float32)]
    audio = np.concatenate(parts)[: 30 * rate]
    audio = np.pad(audio, (0, 30 * rate - audio.size))
    sf.write(str(path), audio, rate)
    return path


def build_encoder(folder: Path) -> Path:
    import torch
    import transformers as T

    path = folder / "wav2vec2-base"
    torch.manual_seed(0)
    T.Wav2Vec2Model(T.Wav2Vec2Config()).eval().save_pretrained(path)
    T.Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(path)
    return path




def best(runs):
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    lines = [
        "# `attnviz audio` vs plain `generate` / forward of the same model",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; best of "
        f"{args.repeat} whole-process runs each; `python benchmarks/audio.py`. Clip: 30 s of real speech (8 kHz, "
        "resampled to 16 kHz).",
        "",
        "| model | baseline | attnviz run | figures | baseline (s) | attnviz audio (s) | time ratio | baseline peak RSS (MiB) | attnviz peak RSS (MiB) | memory ratio |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts: list[bool] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = []
        if WHISPER.exists():
            clip = make_clip(folder / "speech-30s.wav")
            rows.append(("whisper-tiny.en (39 M, real)", WHISPER, clip, ("generate", "timestamps")))
        else:
            print("../shared/models/whisper-tiny.en is absent: Whisper rows skipped", file=sys.stderr)
            clip = None
        if clip is None:
            import numpy as np
            import soundfile as sf

            clip = folder / "noise-30s.wav"
            sf.write(str(clip), (0.1 * np.random.default_rng(0).standard_normal(30 * 16000)).astype("float32"), 16000)
        rows.append(("wav2vec2-base size (95 M, random)", build_encoder(folder), clip, ("forward",)))
        for name, model, path, modes in rows:
            for mode in modes:
                pt, pm = best([one_run(["-c", PLAIN, str(model), str(path), mode]) for _ in range(args.repeat)])
                fewer = ["--views", "alignment,words"] if mode != "forward" else ["--views", "encoder"]
                for variant, extra in (("defaults", []), (" ".join(fewer), fewer)):
                    outs = [folder / f"out-{mode}-{variant[:3]}-{i}" for i in range(args.repeat)]
                    at, am = best([one_run(["-m", "attnviz", "audio", str(path), "--model", str(model), *extra,
                                            "--out", str(o)]) for o in outs])
                    figures = len([p for p in outs[0].iterdir() if p.suffix in (".png", ".svg")])
                    ok = at / pt <= TIME_TARGET and am / pm <= MEMORY_TARGET
                    verdicts.append(ok)
                    base = {"generate": "generate", "timestamps": "generate + token timestamps", "forward": "forward"}[mode]
                    lines.append(f"| {name} | {base} | `{variant}` | {figures} | {pt:.2f} | {at:.2f} | {at / pt:.2f}x | "
                                 f"{pm:.0f} | {am:.0f} | {am / pm:.2f}x |")
    lines += ["", f"Target: within {TIME_TARGET}x the time and {MEMORY_TARGET}x the peak memory: met in "
              f"{sum(verdicts)} of {len(verdicts)} rows."]
    table = "\n".join(lines) + "\n"
    print(table)
    (HERE / "AUDIO.md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
