"""Benchmark the long-document capture (Longformer's sliding window + global tokens) against a plain forward.

    python benchmarks/longdoc.py                      # Longformer at N = 4096 and 16384, BigBird at 4096, 2 runs each
    python benchmarks/longdoc.py --sizes 4096 --repeat 1 --no-bigbird

Model: a random Longformer-base-sized model (12 layers, hidden 768, 12 heads, FFN 3072, attention window 512, so
``w = 256`` keys each side), float32, on N random token ids with the first token global. Each measurement is a fresh
Python process on ``--threads`` (2) threads that loads the model, warms it up on 512 tokens, pages in every weight,
resets the peak-RSS counter and times one call:

- ``floor``   ``model(**inputs)``: a plain forward (Longformer computes its band anyway; nothing is returned);
- ``hold``    the same plain forward while the process holds (and has written) as many bytes as the band: what keeping
  the band costs on this machine whoever keeps it;
- ``eager``   ``output_attentions=True``: transformers returns every layer's band ``[1, H, N, G + 2w + 1]`` and the
  global rows (what a script would do);
- ``sparse``  :func:`attnviz.sparse.capture_sliding_window`: every layer's band kept as :class:`BandAttention`
  (float32 ``[L, H, N, 2w + 1]`` + ``[L, H, N, G]`` + ``[L, H, G, N]``);
- ``focus``   the same with ``keep_band=False, rows=[N // 2]``: only one token's rows ``[L, H, 1, N]`` (what
  ``attnviz text --token`` keeps beside the band).

The same for a random BigBird-base-sized model in block-sparse mode (12 layers x 12 heads, hidden 768, blocks of 64,
3 random blocks; the first token is not special) at ``--bigbird-sizes`` (4096): ``floor``, ``eager`` (every layer's
dense ``[1, H, N, N]`` map, which transformers builds in every block-sparse forward anyway and returns here) and
``sparse`` (:func:`attnviz.blocksparse.capture_block_sparse`: each layer recomputed block by block and checked
against that map; it keeps every layer's blocks, so there is no separate focus mode).

Targets (issue "Long documents"): ``sparse`` <= 1.15x the floor's time and <= floor + 1.1 x the band's bytes in peak
RSS; ``focus`` <= 1.05x the floor. Time is the call's wall time (best of ``--repeat``), peak RSS ``VmHWM`` after the
reset. Results go to ``benchmarks/LONGDOC.md``.
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
from capture import _reset_peak, _status  # noqa: E402  (the RSS counters)

MODES = ("floor", "hold", "eager", "sparse", "focus")
LABELS = {
    "floor": "plain forward (floor)",
    "hold": "plain forward holding the band's bytes (floor of keeping them)",
    "eager": "eager output_attentions (a script)",
    "sparse": "attnviz sparse capture, every layer (band / blocks)",
    "focus": "attnviz focus rows only",
}
BIGBIRD = dict(vocab_size=50358, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               max_position_embeddings=4096, block_size=64, num_random_blocks=3, attention_type="block_sparse")
CONFIG = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
              attention_window=512, max_position_embeddings=16386 + 2, pad_token_id=1, type_vocab_size=1)


def child(mode: str, n: int, model_dir: str, threads: int) -> dict:
    import resource

    import torch
    import transformers as tf

    from attnviz.bands import capture_band

    torch.set_num_threads(threads)
    bigbird = Path(model_dir).name == "bigbird"
    model = (tf.BigBirdModel if bigbird else tf.LongformerModel).from_pretrained(model_dir).eval()

    def inputs(length):
        ids = torch.randint(5, CONFIG["vocab_size"], (1, length), generator=torch.Generator().manual_seed(0))
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if not bigbird:
            glob = torch.zeros_like(ids)
            glob[0, 0] = 1
            out["global_attention_mask"] = glob
        return out

    with torch.inference_mode():
        model(**inputs(1024 if bigbird else 512))
        for p in model.parameters():
            p.sum()
    x = inputs(n)
    baseline = _status()["VmRSS"]
    reset = _reset_peak()
    t0 = time.perf_counter()
    info: dict = {}
    if mode in ("floor", "hold"):
        if mode == "hold":  # as many bytes as the sparse capture keeps, written layer by layer as it would be
            L, H, w = CONFIG["num_hidden_layers"], CONFIG["num_attention_heads"], CONFIG["attention_window"] // 2
            held = [torch.ones((H, n, 2 * w + 3)) for _ in range(L)]
            info["kept_bytes"] = sum(t.numel() * 4 for t in held)
        with torch.inference_mode():
            model(**x)
    elif mode == "eager":
        with torch.inference_mode():
            out = model(**x, output_attentions=True)
        info["kept_bytes"] = sum(a.numel() * 4 for a in out.attentions) + sum(
            a.numel() * 4 for a in (getattr(out, "global_attentions", None) or ()))
    elif bigbird:
        cap = capture_band(model, x)
        info["kept_bytes"] = cap.band.nbytes
    else:
        from attnviz.sparse import capture_sliding_window

        cap = capture_sliding_window(model, x, rows=[n // 2], keep_band=mode == "sparse")
        info["kept_bytes"] = (cap.band.nbytes if cap.band is not None else 0) + cap.rows.numel() * 4
    seconds = time.perf_counter() - t0
    st = _status()
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(model="bigbird" if bigbird else "longformer", mode=mode, n=n, seconds=seconds, peak_rss_mb=st["VmHWM"] if reset else lifetime, baseline_rss_mb=baseline,
                peak_reset=reset, threads=torch.get_num_threads(), load_average=os.getloadavg()[0], **info)


def build(model_dir: str, bigbird: bool = False) -> None:
    import torch
    from transformers import BigBirdConfig, BigBirdModel, LongformerConfig, LongformerModel

    torch.manual_seed(0)
    model = BigBirdModel(BigBirdConfig(**BIGBIRD)) if bigbird else LongformerModel(LongformerConfig(**CONFIG))
    model.save_pretrained(model_dir, safe_serialization=True)


def _run(mode: str, n: int, model_dir: str, threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n), model_dir, str(threads)],
                         capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        return dict(model=Path(model_dir).name, mode=mode, n=n, error=(out.stderr.strip().splitlines() or ["?"])[-1][:200])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="4096,16384", help="document lengths N (comma-separated)")
    parser.add_argument("--bigbird-sizes", default="4096", help="BigBird lengths N")
    parser.add_argument("--no-bigbird", action="store_true")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    if args.child:
        mode, n, model_dir, threads = args.child
        print(json.dumps(child(mode, int(n), model_dir, int(threads))))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("longformer", int(s), args.modes.split(",")) for s in args.sizes.split(",")]
        if not args.no_bigbird:
            cases += [("bigbird", int(s), ["floor", "eager", "sparse"]) for s in args.bigbird_sizes.split(",")]
        for name in dict.fromkeys(c[0] for c in cases):
            build(str(Path(tmp) / name), bigbird=name == "bigbird")
        for name, n, modes in cases:
            for mode in modes:
                runs = [_run(mode, n, str(Path(tmp) / name), args.threads) for _ in range(args.repeat)]
                results.append(best_of(runs, f"{name} N={n} {mode}", mode == "floor"))
    text = _markdown(results, args.repeat, args.threads)
    (HERE / "LONGDOC.md").write_text(text)
    print(text)
    return 0


def _markdown(results: list[dict], repeat: int, threads: int) -> str:
    lines = [
        "# Long-document benchmark (`benchmarks/longdoc.py`)", "",
        f"{platform.processor() or platform.machine()}, {threads} threads, best of {repeat} (time; peak RSS: the highest "
        "run, the lowest for the floor). Random Longformer-base-sized model (12 layers x 12 heads, hidden 768, window "
        "512 = 256 keys each side), first token global; random BigBird-base-sized model (12 x 12, hidden 768, blocks "
        "of 64, 3 random blocks, block-sparse). Peak RSS is the process's high-water mark during the call (the model's "
        "weights included). 'kept' is what the mode keeps.", "",
    ]
    for name, n in dict.fromkeys((r.get("model", "longformer"), r["n"]) for r in results):
        rows = {r["mode"]: r for r in results if r["n"] == n and r.get("model", "longformer") == name}
        floor = rows.get("floor")
        lines += [f"## {'BigBird' if name == 'bigbird' else 'Longformer'}, N = {n:,}", "", "| mode | time (s) | x floor | peak RSS (MB) | kept (MB) | RSS target | met |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for mode in MODES:
            r = rows.get(mode)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {LABELS[mode]} | failed: {r['error']} | | | | | |")
                continue
            ratio = r["seconds"] / floor["seconds"] if floor and "error" not in floor else float("nan")
            kept = r.get("kept_bytes", 0) / 2**20
            target, met = "", ""
            if floor and "error" not in floor and mode in ("sparse", "focus"):
                if mode == "sparse":
                    limit = floor["peak_rss_mb"] + 1.1 * kept
                    target = f"<= {limit:,.0f} (floor + 1.1 x kept)"
                    met = "yes" if r["peak_rss_mb"] <= limit and ratio <= 1.15 else "no"
                else:
                    limit = 1.05 * floor["peak_rss_mb"]
                    target = f"<= {limit:,.0f} (1.05 x floor)"
                    met = "yes" if r["peak_rss_mb"] <= limit and ratio <= 1.05 else "no"
            lines.append(f"| {LABELS[mode]} | {r['seconds']:.2f} | {ratio:.2f} | {r['peak_rss_mb']:,.0f} | {kept:,.0f} | "
                         f"{target} | {met} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
