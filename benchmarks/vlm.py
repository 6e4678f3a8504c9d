"""Benchmark ``attnviz generate --image`` against plain ``model.generate()`` on a many-tile vision-language model.

    python benchmarks/vlm.py                  # 1024x768 photo, 2x2 tiles + base (~2,950 prompt tokens), 64 new tokens
    python benchmarks/vlm.py --quick          # a small model and 112 px tiles: a one-minute smoke run
    python benchmarks/vlm.py --repeat 2 --new 32
    python benchmarks/vlm.py --repeat 3 --wait-load 1.0   # as VLM.md: first wait for a quiet machine (<= 40 min)

The model is a random-weight LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``) built from its config
(seed 0, float32), saved once with its processor in a temporary folder:

- vision tower: SigLIP-like, 12 layers, hidden 768, 12 heads, MLP 3072, 384 px tiles of 14 px patches
  (27 x 27 = 729 tokens a tile; the real OneVision's SigLIP-So400m has the same tiles, 27 layers of 1152);
- language model: Qwen2 with the sizes of ``benchmarks/capture.py``'s ``CONFIG`` (12 layers, hidden 768,
  12 heads with 4 key/value heads, MLP 2048, vocabulary 32000, untied LM head);
- anyres: ``image_grid_pinpoints`` 384 x {1, 2}^2 (at most 2 x 2 tiles, plus the base image),
  ``vision_aspect_ratio="anyres_max_9"`` (the real one's; no pooling at 2 x 2), ``vision_feature_layer=-1``,
  ``vision_feature_select_strategy="full"``;
- tokenizer: word level, ``<|endoftext|> <|im_start|> <|im_end|> <image> <video>`` then ``t5 ... t31999``, with the
  OneVision chat template (the prompt is a user turn with the photo and eight words).

The photo is ``../shared/samples/coffee.png`` resized to 1024 x 768 (a synthetic 1024 x 768 picture where that
file is missing): the processor cuts it into 2 x 2 tiles plus the base image, 5 x 729 patches through the vision
tower, and the prompt holds 729 + 40 x 54 + 40 newline = 2,929 image tokens (2,954 tokens in all).

Every measurement runs in a fresh Python process (``torch.set_num_threads(--threads)``, 2) that loads the model with
:func:`attnviz.vlm.load_vlm` (as the command does), runs a short warm-up generation on a small photo, reads every
weight (resident memory baseline), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and times one
call, from the photo and prompt (processor included) to the generated ids:

- ``plain``   (a): ``processor(...)`` then ``model.generate(**inputs, max_new_tokens=T, do_sample=False)``, SDPA;
- ``eager``   (b): the same with ``output_attentions=True, return_dict_in_generate=True`` and eager attention in
  the whole model (the usual route to attention while generating);
- ``attnviz`` (c): :func:`attnviz.vlm.attend_vlm_generation` (greedy, ``stop_at_eos=False``): what
  ``attnviz generate --chat --image`` runs before it draws;
- ``prefill`` (d): ``processor(...)`` and the first forward pass only (``use_cache=True, logits_to_keep=1``,
  SDPA), the part every mode shares (not a target; shows what dominates).

The generation config's EOS is None (and ``stop_at_eos=False``), so each generates exactly T tokens (``--new``,
64); the generated ids of (a) and (c) are compared. Time is the wall time of the call; CPU time the process's user +
system time during it; peak RSS the process's peak resident memory during it (weights and libraries included).
Each generating run also records when its first token came out (a streamer for (a)/(b), the progress callback for
(c)): the time to the first token is the processor plus the prefill, the rest is the decoding steps. The 1-minute
load average is recorded before each measurement. Writes ``benchmarks/VLM.md`` and ``benchmarks/vlm.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _process import run_child  # noqa: E402
from capture import CONFIG, _reset_peak, _status  # noqa: E402  (the language model sizes of benchmarks/capture.py)

MODES = ("plain", "eager", "attnviz", "prefill")
LABELS = {
    "plain": "(a) model.generate(), SDPA, no capture",
    "eager": "(b) generate(output_attentions=True, return_dict_in_generate=True), eager",
    "attnviz": "(c) attnviz generate --image (attend_vlm_generation)",
    "prefill": "(d) processor + prefill forward only (SDPA)",
}
SAMPLE = HERE.parent.parent / "shared" / "samples" / "coffee.png"
PHOTO_SIZE = (1024, 768)
WARMUP_SIZE = (200, 150)  # 1 tile + base: a quarter of the work
PROMPT = "t17 t230 t4711 t9 t1234 t86 t3001 t42"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

sys.path.insert(0, str(HERE.parent / "tests"))
from vlm_tiny import ONEVISION_TEMPLATE as TEMPLATE  # noqa: E402  (llava-hf/llava-onevision-qwen2-0.5b-ov-hf's)

#: the model's sizes: the full benchmark and the --quick smoke run
SIZES = {
    "full": dict(
        tile=384, patch=14, anyres_max=9,
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
        text={k: v for k, v in CONFIG.items() if k != "max_position_embeddings"} | {"max_position_embeddings": 32768},
    ),
    "quick": dict(
        tile=112, patch=14, anyres_max=9,
        vision=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4),
        text=dict(vocab_size=4000, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=False),
    ),
}


# ---------------------------------------------------------------------------
# the model, its processor, the photo


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"t{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    assert len(fast) == vocab_size, (len(fast), vocab_size)
    return fast


def _processor(tokenizer, tile: int, grid: list[list[int]], patches: int, aspect: str):
    """A LlavaOnevisionProcessor; where transformers cannot build its video processor (no torchvision),
    :class:`attnviz.vlm.NoVideoProcessor` takes that slot (photos only), as :func:`attnviz.vlm.load_processor` does."""
    import transformers as tf
    from attnviz.vlm import NoVideoProcessor

    image_processor = tf.LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile}, image_grid_pinpoints=grid)
    kwargs = dict(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=patches,
                  vision_feature_select_strategy="full", vision_aspect_ratio=aspect, chat_template=TEMPLATE)
    if importlib.util.find_spec("torchvision") is not None:
        return tf.LlavaOnevisionProcessor(video_processor=tf.LlavaOnevisionVideoProcessor(), **kwargs)
    cls = tf.LlavaOnevisionProcessor
    original = cls.check_argument_for_proper_class
    cls.check_argument_for_proper_class = lambda self, name, arg: (
        None if isinstance(arg, NoVideoProcessor) else original(self, name, arg))
    try:
        return cls(video_processor=NoVideoProcessor(), **kwargs)
    finally:
        cls.check_argument_for_proper_class = original


def _save_processor(processor, path: Path, tile: int) -> None:
    from attnviz.vlm import NoVideoProcessor

    if not isinstance(processor.video_processor, NoVideoProcessor):
        processor.save_pretrained(path)
        return
    processor.tokenizer.chat_template = processor.chat_template
    processor.tokenizer._set_processor_class(type(processor).__name__)
    processor.tokenizer.save_pretrained(path)
    config = processor.to_dict()
    config["video_processor"] = {"video_processor_type": "LlavaOnevisionVideoProcessor",
                                 "size": {"height": tile, "width": tile}}
    (path / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (path / "chat_template.jinja").write_text(processor.chat_template)


def build(model_dir: str, size: str) -> dict:
    """The benchmark VLM (random weights, seed 0, float32) with its processor, saved in ``model_dir``."""
    import torch
    import transformers as tf

    s = SIZES[size]
    tile, patch = s["tile"], s["patch"]
    patches = (tile // patch) ** 2
    tok = _tokenizer(s["text"]["vocab_size"])
    image, video, im_end, end = tok.convert_tokens_to_ids(["<image>", "<video>", "<|im_end|>", "<|endoftext|>"])
    grid = [[tile * i, tile * j] for i in (1, 2) for j in (1, 2)]  # at most 2 x 2 tiles (plus the base image)
    aspect = f"anyres_max_{s['anyres_max']}"
    vision = tf.SiglipVisionConfig(**s["vision"], image_size=tile, patch_size=patch, vision_use_head=False)
    text = tf.Qwen2Config(**s["text"], bos_token_id=end, eos_token_id=im_end, pad_token_id=end)
    config = tf.LlavaOnevisionConfig(
        vision_config=vision, text_config=text, image_token_index=image, video_token_index=video,
        image_grid_pinpoints=grid, vision_aspect_ratio=aspect, vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    model = tf.AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    gen = model.generation_config
    gen.eos_token_id = None  # generate exactly --new tokens
    gen.pad_token_id = end
    gen.do_sample = False
    path = Path(model_dir)
    model.save_pretrained(path)
    processor = _processor(tok, tile, grid, patches, aspect)
    _save_processor(processor, path, tile)
    params = {name: sum(p.numel() for p in getattr(model.model, name).parameters())
              for name in ("vision_tower", "multi_modal_projector", "language_model")}
    params["lm_head"] = model.lm_head.weight.numel()
    return {"built": model_dir, "params": params}


def photo(size: tuple[int, int] = PHOTO_SIZE):
    """The benchmark photo: the coffee sample resized to ``size``, or a synthetic picture of that size."""
    import numpy as np
    from PIL import Image

    if SAMPLE.exists():
        return Image.open(SAMPLE).convert("RGB").resize(size, Image.BICUBIC)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([(x * 255 // w), (y * 255 // h), ((x // 64 + y // 64) % 2) * 200 + 30], -1).astype(np.uint8)
    return Image.fromarray(rgb)


# ---------------------------------------------------------------------------
# child side


def child(mode: str, new: int, model_dir: str, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from transformers.generation.streamers import BaseStreamer

    from attnviz.vlm import attend_vlm_generation, load_vlm

    t0 = time.perf_counter()
    vm = load_vlm(model_dir)
    model, processor = vm.model, vm.processor
    if mode == "eager":
        model.set_attn_implementation("eager")
    load_s = time.perf_counter() - t0
    attn_impl = model.config._attn_implementation
    big, small = photo(), photo(WARMUP_SIZE)
    big.load()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    marks: list[float] = []

    class Stamps(BaseStreamer):
        """``generate`` calls ``put`` with the prompt, then with each new token: the time of each token."""

        def put(self, value):
            marks.append(time.perf_counter())

        def end(self):
            pass

    def inputs_of(image):
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return processor(images=[image], text=[text], return_tensors="pt")

    def run(n_new: int, image) -> tuple[list[int], dict]:
        marks.clear()
        if mode == "attnviz":
            r = attend_vlm_generation(PROMPT, image, vm, chat=True, max_new_tokens=n_new, stop_at_eos=False,
                                      progress=lambda step, total: marks.append(time.perf_counter()))
            g = r.generation
            return list(g.generated_ids), {"attentions": list(g.attentions.shape), "backend": g.backend,
                                           "prompt_tokens": len(g.prompt_ids), "image_tokens": r.num_image_tokens,
                                           "first_token_at": marks[0], "last_token_at": marks[-1]}
        t_in = time.perf_counter()
        inputs = inputs_of(image)
        P = inputs["input_ids"].shape[1]
        info = {"prompt_tokens": P, "image_tokens": int((inputs["input_ids"] == vm.image_token_id).sum()),
                "pixel_values": list(inputs["pixel_values"].shape)}
        if mode == "prefill":
            info["processor_seconds"] = time.perf_counter() - t_in
            tower = model.model.vision_tower
            spans: list[float] = []
            hooks = [tower.register_forward_pre_hook(lambda *_: spans.append(time.perf_counter())),
                     tower.register_forward_hook(lambda *_: spans.append(time.perf_counter()))]
            t_fw = time.perf_counter()
            with torch.inference_mode():
                out = model(**inputs, use_cache=True, logits_to_keep=1)
            info["forward_seconds"] = time.perf_counter() - t_fw
            for h in hooks:
                h.remove()
            info["vision_tower_seconds"] = spans[1] - spans[0]
            return [int(out.logits[0, -1].argmax())], info
        kw = dict(max_new_tokens=n_new, do_sample=False, eos_token_id=None, streamer=Stamps())
        if mode == "eager":
            out = model.generate(**inputs, output_attentions=True, return_dict_in_generate=True, **kw)
            info.update(attention_steps=len(out.attentions), first_token_at=marks[1], last_token_at=marks[-1])
            return out.sequences[0, P:].tolist(), info
        with torch.inference_mode():
            out = model.generate(**inputs, **kw)
        info.update(first_token_at=marks[1], last_token_at=marks[-1])
        return out[0, P:].tolist(), info

    run(2, small)  # warm-up
    with torch.inference_mode():
        for param in model.parameters():
            param.sum()
    baseline = _status()["VmRSS"]
    load_before = os.getloadavg()[0]
    reset = _reset_peak()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    tokens, info = run(new, big)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    st = _status()
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if "first_token_at" in info:
        first, last = info.pop("first_token_at"), info.pop("last_token_at")
        info["first_token_seconds"] = first - t0  # processor + prefill (+ for (c) the first token's captured step)
        info["decode_seconds"] = last - first
    return dict(mode=mode, new=new, seconds=seconds, cpu_seconds=cpu, peak_rss_mb=st["VmHWM"] if reset else lifetime,
                baseline_rss_mb=baseline, peak_reset=reset, load_seconds=load_s, load_average=load_before,
                attn_implementation=str(attn_impl), tokens=tokens, **info)


# ---------------------------------------------------------------------------
# parent side


def _run_child(args: list[str], threads: int, timeout: float) -> dict:
    return run_child(__file__, args, threads, timeout)


def _combine(runs: list[dict]) -> dict:
    ok = [r for r in runs if "seconds" in r]
    if not ok:
        return runs[0]
    best = dict(min(ok, key=lambda r: r["seconds"]))
    pick = min if best["mode"] == "plain" else max  # conservative ratios
    peak = pick(ok, key=lambda r: r["peak_rss_mb"])
    best["peak_rss_mb"], best["baseline_rss_mb"] = peak["peak_rss_mb"], peak["baseline_rss_mb"]
    best["runs"] = [{k: r.get(k) for k in ("seconds", "cpu_seconds", "peak_rss_mb", "load_average", "first_token_seconds",
                                           "decode_seconds")} for r in ok]
    return best


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(results: dict[str, dict]) -> tuple[str, list[str]]:
    lines = ["| run | time (s) | time / plain | CPU (s) | CPU / plain | peak RSS (MiB) | peak / plain | peak - baseline (MiB) "
             "| to 1st token (s) | decode (s) | load avg |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    plain = results.get("plain", {})
    for mode in MODES:
        r = results.get(mode)
        if r is None:
            continue
        if "seconds" not in r:
            lines.append(f"| {LABELS[mode]} | {r.get('error')} | | | | | | | | | |")
            continue
        tr = r["seconds"] / plain["seconds"] if "seconds" in plain else None
        mr = r["peak_rss_mb"] / plain["peak_rss_mb"] if "peak_rss_mb" in plain else None
        cr = r["cpu_seconds"] / plain["cpu_seconds"] if "cpu_seconds" in plain else None
        first = r.get("first_token_seconds")
        decode = r.get("decode_seconds")
        loads = "/".join(f"{x['load_average']:.2f}" for x in r.get("runs", [r]))
        lines.append(f"| {LABELS[mode]} | {r['seconds']:.2f} | {_x(tr)} | {r['cpu_seconds']:.2f} | {_x(cr)} | "
                     f"{r['peak_rss_mb']:.0f} | {_x(mr)} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} | "
                     f"{'-' if first is None else f'{first:.2f}'} | {'-' if decode is None else f'{decode:.2f}'} | {loads} |")
    checks = []
    a, c = results.get("attnviz", {}), plain
    if "seconds" in a and "seconds" in c:
        tr, mr = a["seconds"] / c["seconds"], a["peak_rss_mb"] / c["peak_rss_mb"]
        cr = a["cpu_seconds"] / c["cpu_seconds"]
        checks.append(f"- attnviz generate --image time {tr:.2f}x plain generate (target <= 1.2x): "
                      f"{'met' if tr <= 1.2 else 'MISSED'} (CPU time {cr:.2f}x, less sensitive to other load)")
        checks.append(f"- attnviz generate --image peak RSS {mr:.2f}x plain generate (target <= 1.15x): "
                      f"{'met' if mr <= 1.15 else 'MISSED'}")
        same = a.get("tokens") == c.get("tokens")
        checks.append(f"- same generated ids as plain greedy generate: {'yes' if same else 'NO'}")
    e = results.get("eager", {})
    if "seconds" in e and "seconds" in c:
        checks.append(f"- eager output_attentions: time {e['seconds'] / c['seconds']:.2f}x, peak RSS "
                      f"{e['peak_rss_mb'] / c['peak_rss_mb']:.2f}x plain")
    return "\n".join(lines), checks


def explain(results: dict[str, dict], new: int, layers: int, heads: int) -> list[str]:
    """What dominates, in numbers from the runs (a few lines of markdown)."""
    out = []
    d, a, c, e = (results.get(m, {}) for m in ("prefill", "plain", "attnviz", "eager"))
    P = next((r["prompt_tokens"] for r in (a, c, d, e) if "prompt_tokens" in r), None)
    if "vision_tower_seconds" in d:
        v, f, pr = d["vision_tower_seconds"], d["forward_seconds"], d["processor_seconds"]
        share = d["seconds"] / a["seconds"] if "seconds" in a else 0
        out.append(f"- {'The prefill dominates' if share > 0.5 else 'The prefill'}: (d) takes {d['seconds']:.1f} s: the processor {pr:.2f} s, the vision tower "
                   f"{v:.1f} s ({d['pixel_values'][1]} tiles of {d['pixel_values'][-1]} px through the SigLIP layers), "
                   f"the projector, feature packing and the language model's prefill over {P} tokens {f - v:.1f} s"
                   + (f"; {share:.0%} of plain generate's time." if share else "."))
    steps = max(new - 1, 1)
    if "decode_seconds" in a and "decode_seconds" in c:
        ma, mc = a["decode_seconds"] / steps * 1e3, c["decode_seconds"] / steps * 1e3
        extra = c["seconds"] - a["seconds"]
        out.append(f"- Decoding: plain generate {ma:.0f} ms a token, attnviz {mc:.0f} ms a token (each step also "
                   f"recomputes the new token's row in {layers} layers x {heads} heads over up to {P + new if P else '?'} "
                   f"keys and copies it into the result; attnviz runs one more step than generate, for the last token's "
                   f"row). (c) - (a) = {extra:+.2f} s in all, of which first token {c.get('first_token_seconds', 0) - a.get('first_token_seconds', 0):+.2f} s "
                   f"and decoding {c['decode_seconds'] - a['decode_seconds']:+.2f} s.")
    if "peak_rss_mb" in a and "peak_rss_mb" in c and P:
        result = layers * heads * new * (P + new) * 4 / (1 << 20)
        out.append(f"- Memory: plain's peak is {a['peak_rss_mb'] - a['baseline_rss_mb']:.0f} MiB over its baseline "
                   f"(the prefill's activations, the KV cache); attnviz's {c['peak_rss_mb'] - c['baseline_rss_mb']:.0f} MiB, "
                   f"including the result, float32 [{layers}, {heads}, {new}, {P + new}] = {result:.0f} MiB.")
    if "peak_rss_mb" in e and P:
        maps = layers * heads * P * P * 4 / (1 << 30)
        out.append(f"- Eager: the prefill keeps every layer's [{heads}, {P}, {P}] map ({maps:.1f} GiB in float32) and "
                   f"computes attention without SDPA in the vision tower and the language model: "
                   f"{e['peak_rss_mb'] - e['baseline_rss_mb']:.0f} MiB over its baseline, first token after "
                   f"{e.get('first_token_seconds', float('nan')):.1f} s.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new", type=int, default=64, help="new tokens")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="fresh-process runs per figure (interleaved)")
    p.add_argument("--quick", action="store_true", help="a small model (2 + 2 layers, hidden 128, 112 px tiles): smoke run")
    p.add_argument("--wait-load", type=float, default=None, metavar="L",
                   help="first wait (polling every 60 s, at most --wait-max minutes) until the 1-minute load average is below L")
    p.add_argument("--wait-max", type=float, default=40.0, help="minutes --wait-load waits at most (then runs anyway)")
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--build", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    size = "quick" if a.quick else "full"
    if a.build:
        print(json.dumps(build(a.build, size)))
        return 0
    if a.child:
        print(json.dumps(child(a.child, a.new, a.model, a.threads)))
        return 0
    modes = [m for m in a.modes.split(",") if m]
    waited = ""
    if a.wait_load is not None:
        t_wait = time.time()
        while os.getloadavg()[0] >= a.wait_load and time.time() - t_wait < a.wait_max * 60:
            print(f"  load average {os.getloadavg()[0]:.2f} >= {a.wait_load}: waiting ...", flush=True)
            time.sleep(60)
        low = os.getloadavg()[0] < a.wait_load
        waited = (f"Started after waiting {(time.time() - t_wait) / 60:.0f} min for the 1-minute load average to fall below "
                  f"{a.wait_load}{'' if low else f' (it did not within {a.wait_max:.0f} min)'}. ")
    started = time.time()
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="attnviz-vlmbench-") as tmp:
        model_dir = str(Path(tmp) / "onevision")
        print(f"building the benchmark model ({size}) in {model_dir} ...", flush=True)
        built = _run_child(["--build", model_dir] + (["--quick"] if a.quick else []), a.threads, 900)
        if "error" in built:
            print(built["error"], file=sys.stderr)
            return 1
        print(f"  parameters: {built['params']}", flush=True)
        for rep in range(a.repeat):
            for mode in modes:
                load = os.getloadavg()[0]
                r = _run_child(["--child", mode, "--new", str(a.new), "--model", model_dir], a.threads, 3600)
                runs[mode].append(r)
                shown = (f"{r['seconds']:.2f} s (CPU {r['cpu_seconds']:.2f} s), peak {r['peak_rss_mb']:.0f} MiB, "
                         f"{r['prompt_tokens']} prompt tokens ({r['image_tokens']} image)") if "seconds" in r else r.get("error")
                print(f"  run {rep + 1} {mode} (load average {load:.2f}): {shown}", flush=True)
    results = {m: _combine(rs) for m, rs in runs.items()}
    md, checks = table(results)
    load_end = Path("/proc/loadavg").read_text().split()[:3]
    import torch
    import transformers

    s = SIZES[size]
    any_ok = next((r for r in results.values() if "prompt_tokens" in r), {})
    v, t = s["vision"], s["text"]
    params = built["params"]
    header = (
        f"## Vision-language generation benchmark{' (--quick)' if a.quick else ''}\n\n"
        f"A random-weight LLaVA-OneVision (float32, seed 0): SigLIP-like vision tower ({v['num_hidden_layers']} layers, "
        f"hidden {v['hidden_size']}, {v['num_attention_heads']} heads, {s['tile']} px tiles of {s['patch']} px patches, "
        f"{params['vision_tower'] / 1e6:.0f}M parameters) and a Qwen2 language model ({t['num_hidden_layers']} layers, "
        f"hidden {t['hidden_size']}, {t['num_attention_heads']} heads / {t['num_key_value_heads']} KV heads, vocabulary "
        f"{t['vocab_size']}, {(params['language_model'] + params['lm_head']) / 1e6:.0f}M parameters with the LM head); "
        f"anyres pinpoints {s['tile']} x {{1, 2}}^2, anyres_max_{s['anyres_max']}. Photo "
        f"{'coffee.png resized' if SAMPLE.exists() else 'synthetic'} to {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}: 2 x 2 tiles + the "
        f"base image, prompt {any_ok.get('prompt_tokens', '?')} tokens of which {any_ok.get('image_tokens', '?')} image "
        f"tokens (chat template). {a.new} new tokens, greedy, EOS off; {a.threads} torch threads; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, {platform.machine()}, {os.cpu_count()} CPUs. "
        f"Every row is a fresh process; time is the wall time of the call (processor included), CPU the process's "
        f"user + system time, peak RSS the process's peak resident memory during it (weights included); \"to 1st "
        f"token\" is processor + prefill (for (c) also its first captured step), \"decode\" the remaining steps; \"load avg\" the "
        f"1-minute load average just before each timed call, one per run (it includes this benchmark's own previous "
        f"processes: the machine has {os.cpu_count()} cores and each run keeps 2 busy). With --repeat, time is the fastest run, "
        f"peak RSS the lowest run for (a) and the highest for the others. {waited}Load average at start / end: "
        f"{' '.join(load_start)} / {' '.join(load_end)} (the machine is shared with other jobs: timings are provisional). "
        f"`python benchmarks/vlm.py{' --quick' if a.quick else ''}{f' --repeat {a.repeat}' if a.repeat != 1 else ''}"
        f"{f' --wait-load {a.wait_load}' if a.wait_load is not None else ''}` reproduces it "
        f"({(time.time() - started) / 60:.1f} min).\n\n"
    )
    why = explain(results, a.new, t["num_hidden_layers"], t["num_attention_heads"])
    text = header + md + "\n\n" + "\n".join(checks) + "\n" + ("\n### What dominates\n\n" + "\n".join(why) + "\n" if why else "")
    print(text)
    if not a.no_write:
        out = Path(a.out)
        (out / "VLM.md").write_text(text)
        (out / "vlm.json").write_text(json.dumps({"size": size, "new": a.new, "threads": a.threads, "repeat": a.repeat,
                                                  "params": params, "load_start": load_start, "load_end": load_end,
                                                  "results": results, "checks": checks,
                                                  "explanation": why}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
