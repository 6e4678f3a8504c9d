"""Benchmark the gradient and value methods (``--method relevance / grad-attention / value-norm``) against a forward +
backward floor.

    python benchmarks/methods.py                 # bench LM at N = 512 and 2048, DeiT-Tiny; two runs each (~6 min)
    python benchmarks/methods.py --quick         # one run each
    python benchmarks/methods.py --sizes 512 --repeat 1

Models: the 12-layer bench model of ``benchmarks/capture.py`` (random Llama-style decoder: hidden 768, 12 heads,
4 key/value heads, float32) with its language-model head (``LlamaForCausalLM``), on N random token ids, target the
log-probability of the top next token at the last position; and the real DeiT-Tiny in ``../shared/models`` on
``samples/chelsea.png`` (197 tokens: [CLS] + 14x14 patches), target the top class's logit. Each measurement is a fresh Python process on
``--threads`` (2) threads that loads the model, warms it up, pages in every weight, resets the peak-RSS counter and
times one call:

- ``floor``      forward only, SDPA, no gradient (what value-norm's forward costs at least);
- ``fb_sdpa``    forward + backward, SDPA: the gradient of the target with respect to the input embeddings (pixels
  for DeiT), parameters frozen -- the cheapest backward pass through the network;
- ``fb_eager``   the same with eager attention: the floor of any method that needs ``dy/dA`` (autograd keeps every
  layer's attention probabilities ``[H, N, N]`` for the backward pass);
- ``notebook``   eager ``output_attentions`` with ``retain_grad`` on every layer's map, then backward: what a script
  does, keeping ``[L, H, N, N]`` probabilities and their gradients;
- ``grad``       attnviz's signal pass with gradients (``attnviz.signals.capture_signals``): what ``relevance`` and
  ``grad-attention`` run; keeps one ``[N, N]`` per layer;
- ``values``     attnviz's signal pass for ``value-norm`` (forward only, no gradient).

Time is the call's wall time (best of ``--repeat``), peak RSS the process's ``VmHWM`` after the reset (highest run;
the floors: lowest). Results go to ``benchmarks/METHODS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _process import best_of  # noqa: E402
from capture import CONFIG, _reset_peak, _status  # noqa: E402  (the bench model and the RSS counters)

ROOT = HERE.parent
DEIT = ROOT.parent / "shared" / "models" / "deit-tiny-patch16-224"
PHOTO = ROOT / "samples" / "chelsea.png"
MODES = ("floor", "fb_sdpa", "fb_eager", "notebook", "grad", "values")
LABELS = {
    "floor": "forward, SDPA, no gradient",
    "fb_sdpa": "forward + backward, SDPA (floor)",
    "fb_eager": "forward + backward, eager attention (floor for dy/dA)",
    "notebook": "eager output_attentions + retain_grad, backward",
    "grad": "attnviz gradient pass (relevance, grad-attention)",
    "values": "attnviz value pass (value-norm)",
}


def _inputs(which: str, n: int, model):
    import torch

    if which == "deit":
        from attnviz.inputs.imagefile import load_image
        from attnviz.inputs.patches import load_image_model, preprocess

        im = load_image_model(str(DEIT), weights=False)
        return {"pixel_values": preprocess(im, load_image(PHOTO))[0]}
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, n), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _target(which: str, logits):
    from attnviz.signals import Target

    if which == "deit":
        return Target("class", int(logits[0].argmax()), "top class")
    return Target("token", int(logits[0, -1].argmax()), "top next token", position=logits.shape[1] - 1)


def child(mode: str, which: str, n: int, model_dir: str, threads: int) -> dict:
    import resource

    import torch
    import transformers as tf

    from attnviz.signals import capture_signals, target_value

    torch.set_num_threads(threads)
    auto = tf.AutoModelForImageClassification if which == "deit" else tf.AutoModelForCausalLM
    model = auto.from_pretrained(model_dir if which != "deit" else str(DEIT),
                                 attn_implementation="eager" if mode in ("fb_eager", "notebook") else "sdpa").eval()
    inputs = _inputs(which, n, model)
    with torch.inference_mode():
        logits = model(**inputs).logits.float()
        for p in model.parameters():
            p.sum()
    target = _target(which, logits)
    for p in model.parameters():
        p.requires_grad_(mode == "notebook")
    baseline = _status()["VmRSS"]
    reset = _reset_peak()
    t0 = time.perf_counter()
    info: dict = {}
    if mode == "floor":
        with torch.inference_mode():
            model(**inputs)
    elif mode in ("fb_sdpa", "fb_eager"):
        with torch.enable_grad():
            if which == "deit":
                x = inputs["pixel_values"].clone().requires_grad_(True)
                out = model(pixel_values=x)
            else:
                x = model.get_input_embeddings()(inputs["input_ids"]).detach().requires_grad_(True)
                out = model(inputs_embeds=x, attention_mask=inputs["attention_mask"])
            (g,) = torch.autograd.grad(target_value(out, target), [x])
        info["grad_norm"] = float(g.norm())
    elif mode == "notebook":
        with torch.enable_grad():
            out = model(**inputs, output_attentions=True)
            for a in out.attentions:
                a.retain_grad()
            target_value(out, target).backward()
        info["maps"] = [len(out.attentions), *out.attentions[0].shape[1:]]
    else:
        sig = capture_signals(model, inputs, target, gradients=mode == "grad", values=mode == "values")
        kept = sig.grad_weighted if mode == "grad" else sig.value_weighted
        info["maps"] = [len(kept), *kept[0].shape]
    seconds = time.perf_counter() - t0
    st = _status()
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(mode=mode, model=which, n=int(logits.shape[1]) if which != "deit" else 197, seconds=seconds,
                peak_rss_mb=st["VmHWM"] if reset else lifetime, baseline_rss_mb=baseline, peak_reset=reset,
                threads=torch.get_num_threads(), load_average=os.getloadavg()[0], **info)


def build(model_dir: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).save_pretrained(model_dir, safe_serialization=True)


def _run(mode: str, which: str, n: int, model_dir: str, threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--child", mode, which, str(n), model_dir, str(threads)],
                         capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        return dict(mode=mode, model=which, n=n, error=(out.stderr.strip().splitlines() or ["?"])[-1][:200])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="512,2048", help="bench-model lengths N (comma-separated)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one run each")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-deit", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        mode, which, n, model_dir, threads = args.child
        print(json.dumps(child(mode, which, int(n), model_dir, int(threads))))
        return 0
    repeat = 1 if args.quick else args.repeat
    cases = [("llama", int(n)) for n in args.sizes.split(",")] + ([] if args.no_deit or not DEIT.exists() else [("deit", 197)])
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        build(tmp)
        for which, n in cases:
            for mode in MODES:
                runs = [_run(mode, which, n, tmp, args.threads) for _ in range(repeat)]
                results.append(best_of(runs, f"{which} N={n} {mode}", mode in ("floor", "fb_sdpa", "fb_eager")))
    text = _markdown(results, repeat, args.threads)
    (HERE / "METHODS.md").write_text(text)
    print(text)
    return 0


def _markdown(results: list[dict], repeat: int, threads: int) -> str:
    lines = [
        "# Methods benchmark (`benchmarks/methods.py`)", "",
        f"{platform.processor() or platform.machine()}, {threads} threads, best of {repeat} (time) / highest peak RSS "
        "(lowest for the floors). Ratios: against `fb_sdpa` (forward + backward, SDPA) and `fb_eager` (forward + "
        "backward with eager attention, the floor of anything that needs the gradient of the attention probabilities).", "",
    ]
    for which, n in dict.fromkeys((r["model"], r["n"]) for r in results):
        rows = {r["mode"]: r for r in results if r["model"] == which and r["n"] == n}
        name = "bench LM (12 layers, hidden 768)" if which == "llama" else "DeiT-Tiny (real weights)"
        lines += [f"## {name}, N = {n}", "", "| run | time (s) | peak RSS (MB) | time / fb_sdpa | time / fb_eager | "
                  "RSS / fb_sdpa | RSS / fb_eager |", "|---|---:|---:|---:|---:|---:|---:|"]
        fs, fe = rows.get("fb_sdpa", {}), rows.get("fb_eager", {})
        for mode in MODES:
            r = rows.get(mode)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {LABELS[mode]} | failed: {r['error']} | | | | | |")
                continue

            def ratio(a, b):
                return f"{a / b:.2f}x" if b else "-"

            lines.append(f"| {LABELS[mode]} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | "
                         f"{ratio(r['seconds'], fs.get('seconds', 0))} | {ratio(r['seconds'], fe.get('seconds', 0))} | "
                         f"{ratio(r['peak_rss_mb'], fs.get('peak_rss_mb', 0))} | {ratio(r['peak_rss_mb'], fe.get('peak_rss_mb', 0))} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
