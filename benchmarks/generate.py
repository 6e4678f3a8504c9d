"""Benchmark ``attnviz generate`` against plain ``model.generate()`` and the usual output_attentions route.

    python benchmarks/generate.py                        # prompt 1024 tokens, 128 new tokens, 1 run each
    python benchmarks/generate.py --prompt 256 --new 32  # quick
    python benchmarks/generate.py --repeat 2

The model is the 12-layer random-weight Llama-style model of ``benchmarks/capture.py``
(its ``CONFIG``: hidden 768, 12 heads with 4 key/value heads, vocabulary 32000,
float32, seed 0), here with its language-model head (``LlamaForCausalLM``), and a
word-level tokenizer whose tokens are ``t0 ... t31999`` so that a prompt of N random
"words" is exactly N tokens. Every measurement runs in a fresh Python process
(``torch.set_num_threads(--threads)``, 2) that loads the model, runs a short
warm-up generation, reads every weight (resident memory baseline), resets the
kernel's peak-RSS counter (``/proc/self/clear_refs``) and times one call on the
same prompt:

- ``plain``   (a): ``model.generate(ids, max_new_tokens=T, do_sample=False)`` with SDPA, no capture;
- ``eager``   (b): the same with ``output_attentions=True, return_dict_in_generate=True`` and
  eager attention (the usual route to attention while generating);
- ``attnviz`` (c): :func:`attnviz.generate.attend_generation` (what ``attnviz generate`` runs before it
  draws): greedy, KV cache, SDPA, every generated token's row in every layer and head captured.

EOS is disabled in all three so that each generates exactly T tokens; the
generated tokens of (a) and (c) are compared. Time is wall time of the call; peak
RSS the process's peak resident memory during it (weights and libraries
included). Writes ``benchmarks/GENERATE.md`` and ``benchmarks/generate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _process import run_child  # noqa: E402
from capture import CONFIG, _reset_peak, _status  # noqa: E402  (the benchmark model of benchmarks/capture.py)

MODES = ("plain", "eager", "attnviz")
LABELS = {
    "plain": "(a) model.generate(), SDPA, no capture",
    "eager": "(b) generate(output_attentions=True, return_dict_in_generate=True), eager",
    "attnviz": "(c) attnviz generate (attend_generation)",
}


def build(model_dir: str) -> None:
    """The benchmark model of benchmarks/capture.py with its LM head, plus a word-level tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**CONFIG))
    model.generation_config.eos_token_id = None  # generate exactly --new tokens
    model.save_pretrained(model_dir, safe_serialization=True)
    vocab = {f"t{i}": i for i in range(CONFIG["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(model_dir)


def child(mode: str, prompt_len: int, new: int, model_dir: str, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from attnviz.generate import attend_generation, load_generation_model

    t0 = time.perf_counter()
    tm = load_generation_model(model_dir)
    model = tm.model
    if mode == "eager":
        model.set_attn_implementation("eager")
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CONFIG["vocab_size"], (prompt_len,), generator=gen).tolist()
    prompt = " ".join(f"t{i}" for i in ids)
    x = torch.tensor([ids])
    kwargs = dict(attention_mask=torch.ones_like(x), max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)

    def run(n_new: int, p: str, xx):
        if mode == "attnviz":
            r = attend_generation(p, tm, max_new_tokens=n_new, stop_at_eos=False)
            return list(r.generated_ids), {"attentions": list(r.attentions.shape), "backend": r.backend}
        kw = dict(kwargs, max_new_tokens=n_new, attention_mask=torch.ones_like(xx))
        if mode == "eager":
            out = model.generate(xx, output_attentions=True, return_dict_in_generate=True, **kw)
            return out.sequences[0, xx.shape[1]:].tolist(), {"attention_steps": len(out.attentions)}
        with torch.inference_mode():
            out = model.generate(xx, **kw)
        return out[0, xx.shape[1]:].tolist(), {}

    run(2, " ".join(prompt.split()[:16]), x[:, :16])  # warm-up
    with torch.inference_mode():
        for param in model.parameters():
            param.sum()
    baseline = _status()["VmRSS"]
    reset = _reset_peak()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    tokens, info = run(new, prompt, x)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    st = _status()
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(mode=mode, prompt=prompt_len, new=new, seconds=seconds, cpu_seconds=cpu, peak_rss_mb=st["VmHWM"] if reset else lifetime,
                baseline_rss_mb=baseline, peak_reset=reset, load_seconds=load_s, load_average=os.getloadavg()[0],
                tokens=tokens, **info)


def _run_child(args: list[str], threads: int, timeout: float) -> dict:
    return run_child(__file__, args, threads, timeout)


def _combine(runs: list[dict]) -> dict:
    ok = [r for r in runs if "seconds" in r]
    if not ok:
        return runs[0]
    best = dict(min(ok, key=lambda r: r["seconds"]))
    pick = min if best["mode"] == "plain" else max  # conservative ratios
    best["peak_rss_mb"] = pick(r["peak_rss_mb"] for r in ok)
    best["runs"] = [{k: r[k] for k in ("seconds", "cpu_seconds", "peak_rss_mb", "load_average")} for r in ok]
    return best


def table(results: dict[str, dict]) -> tuple[str, list[str]]:
    lines = ["| run | time (s) | time / plain | CPU (s) | CPU / plain | peak RSS (MiB) | peak / plain | peak - baseline (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    plain = results.get("plain", {})
    for mode in MODES:
        r = results.get(mode)
        if r is None:
            continue
        if "seconds" not in r:
            lines.append(f"| {LABELS[mode]} | {r.get('error')} | | | | | | |")
            continue
        tr = r["seconds"] / plain["seconds"] if "seconds" in plain else None
        mr = r["peak_rss_mb"] / plain["peak_rss_mb"] if "peak_rss_mb" in plain else None
        cr = r["cpu_seconds"] / plain["cpu_seconds"] if "cpu_seconds" in plain else None
        lines.append(f"| {LABELS[mode]} | {r['seconds']:.2f} | {'-' if tr is None else f'{tr:.2f}x'} | {r['cpu_seconds']:.2f} | "
                     f"{'-' if cr is None else f'{cr:.2f}x'} | {r['peak_rss_mb']:.0f} | "
                     f"{'-' if mr is None else f'{mr:.2f}x'} | {r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} |")
    checks = []
    a, c = results.get("attnviz", {}), plain
    if "seconds" in a and "seconds" in c:
        tr, mr = a["seconds"] / c["seconds"], a["peak_rss_mb"] / c["peak_rss_mb"]
        cr = a["cpu_seconds"] / c["cpu_seconds"]
        checks.append(f"- attnviz generate time {tr:.2f}x plain generate (target <= 1.2x): {'met' if tr <= 1.2 else 'MISSED'}"
                      f" (CPU time {cr:.2f}x, less sensitive to other load)")
        checks.append(f"- attnviz generate peak RSS {mr:.2f}x plain generate (target <= 1.1x): {'met' if mr <= 1.1 else 'MISSED'}")
        same = a.get("tokens") == c.get("tokens")
        checks.append(f"- same generated tokens as plain greedy generate: {'yes' if same else 'NO'}")
    return "\n".join(lines), checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens")
    p.add_argument("--new", type=int, default=128, help="new tokens")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="fresh-process runs per figure (interleaved)")
    p.add_argument("--out", default=str(HERE))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--build", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.build:
        build(a.build)
        print(json.dumps({"built": a.build}))
        return 0
    if a.child:
        print(json.dumps(child(a.child, a.prompt, a.new, a.model, a.threads)))
        return 0
    modes = [m for m in a.modes.split(",") if m]
    started = time.time()
    uptime_before = Path("/proc/loadavg").read_text().split()[:3]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="attnviz-genbench-") as tmp:
        model_dir = str(Path(tmp) / "llama-lm")
        print(f"building the benchmark model in {model_dir} ...", flush=True)
        built = _run_child(["--build", model_dir], a.threads, 900)
        if "error" in built:
            print(built["error"], file=sys.stderr)
            return 1
        for rep in range(a.repeat):
            for mode in modes:
                r = _run_child(["--child", mode, "--prompt", str(a.prompt), "--new", str(a.new), "--model", model_dir], a.threads, 3600)
                runs[mode].append(r)
                shown = f"{r['seconds']:.2f} s, peak {r['peak_rss_mb']:.0f} MiB" if "seconds" in r else r.get("error")
                print(f"  run {rep + 1} {mode}: {shown}", flush=True)
    results = {m: _combine(rs) for m, rs in runs.items()}
    md, checks = table(results)
    load = Path("/proc/loadavg").read_text().split()[:3]
    import platform

    import torch
    import transformers

    header = (
        f"## Generation benchmark\n\nPrompt {a.prompt} tokens, {a.new} new tokens, greedy, on the 12-layer random-weight "
        f"Llama-style model of `benchmarks/capture.py` with its LM head (`LlamaForCausalLM`, float32), {a.threads} torch "
        f"threads; torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}. Every row is a fresh "
        f"process; time is the wall time of the call, peak RSS the process's peak resident memory during it (weights included). "
        f"Load average before / after: {' '.join(uptime_before)} / {' '.join(load)} (the machine is shared: timings are "
        f"provisional). `python benchmarks/generate.py` reproduces it ({(time.time() - started) / 60:.1f} min).\n\n"
    )
    text = header + md + "\n\n" + "\n".join(checks) + "\n"
    print(text)
    if not a.no_write:
        out = Path(a.out)
        (out / "GENERATE.md").write_text(text)
        (out / "generate.json").write_text(json.dumps({"results": results, "checks": checks}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
