"""What the run-time check against eager (attnviz.verify) adds to the README's ``attnviz text`` command.

    python benchmarks/verify_overhead.py              # 5 interleaved runs of every variant
    python benchmarks/verify_overhead.py --repeat 3 --baseline /path/to/other/checkout

Runs, each in a fresh process (as a user would), the README's command on the
default model (``sentence-transformers/all-MiniLM-L6-v2``, model type ``bert``)::

    attnviz text "The animal didn't cross the street because it was too tired." --token it

- ``no-verify``: with ``--no-verify`` (no check at all);
- ``default``: as a user runs it; ``bert`` is in ``attnviz.verify.PROVEN_TYPES``, so
  no comparison runs (only the one-time test at load whether the model takes
  attnviz's attention function);
- ``forced-check``: ``PROVEN_TYPES`` emptied in the child, so the comparison
  with eager runs on the first 32 tokens: what a model type outside the list pays;
- ``baseline`` (with ``--baseline PATH``): the same command from another checkout
  (e.g. before this change).

Every variant runs ``--repeat`` times, interleaved; the table gives the median and
the fastest wall time of the whole process, and the default's overhead over
``no-verify`` (median). Whole-process times are dominated by imports and loading,
which are noisy on a shared machine, so a second table times the pipeline in one
warm process (``attnviz.pipelines.text.run``, the CLI's work without printing; ``--inprocess N``
interleaved calls of each variant) and the load-time test
(``attnviz.capture.takes_attnviz``) on its own. The load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The animal didn't cross the street because it was too tired."
CHILD = """
import sys
import attnviz.verify as v
if sys.argv[1] == "forced-check":
    v.PROVEN_TYPES = frozenset()
from attnviz.cli import app
sys.argv = ["attnviz"] + sys.argv[2:]
try:
    app()
except SystemExit as e:
    if e.code:
        raise
"""


def run(variant: str, root: Path, out: Path) -> float:
    args = ["text", TEXT, "--token", "it", "--out", str(out), "--json"]
    if variant == "no-verify":
        args.append("--no-verify")
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, variant, *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed: {done.stderr.strip()[-400:]}")
    return elapsed


INPROCESS = """
import gc, statistics, sys, tempfile, time
from pathlib import Path
import attnviz.verify as v
from attnviz.capture import takes_attnviz
from attnviz.pipelines.common import ModelRequest, OutputRequest
from attnviz.pipelines.text import TextRequest, run
from attnviz.inputs.tokens import load_text_model

n = int(sys.argv[1])


def run_text(out, verify):
    return run(TextRequest(__TEXT__, token="it", model=ModelRequest(verify=verify), output=OutputRequest(out=out)))


proven = v.PROVEN_TYPES
times = {"no-verify": [], "default": [], "forced-check": []}
cpu = {name: [] for name in times}
with tempfile.TemporaryDirectory() as tmp:
    run_text(Path(tmp) / "warm", True)
    names = list(times)
    for i in range(n):
        for name in names[i % 3:] + names[: i % 3]:  # rotate the order: no variant always runs first
            gc.collect()
            v.PROVEN_TYPES = frozenset() if name == "forced-check" else proven
            t, c = time.perf_counter(), time.process_time()
            run_text(Path(tmp) / f"{name}{i}", name != "no-verify")
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
v.PROVEN_TYPES = proven
tm = load_text_model()
t = time.perf_counter()
for _ in range(20):
    takes_attnviz(tm.model)
check = (time.perf_counter() - t) / 20
t = time.perf_counter()
for _ in range(1000):
    v._VERDICTS.clear()
    v.verify_model(tm.model, tm.model_type, {})
lookup = (time.perf_counter() - t) / 1000
base, cbase = statistics.median(times["no-verify"]), statistics.median(cpu["no-verify"])
for name, ts in times.items():
    med, cmed = statistics.median(ts), statistics.median(cpu[name])
    print(f"{name:<14} {med:>9.3f} {min(ts):>10.3f} {100 * (med / base - 1):>+12.1f}% {cmed:>10.3f} {100 * (cmed / cbase - 1):>+12.1f}%")
print(f"takes_attnviz (the load-time test, every variant): {check * 1000:.2f} ms; "
      f"verify_model on a proven type (what 'default' adds over 'no-verify'): {lookup * 1e6:.1f} us")
""".replace("__TEXT__", repr(TEXT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to time the same command from")
    parser.add_argument("--inprocess", type=int, default=10, help="interleaved in-process runs of each variant (0: skip)")
    args = parser.parse_args()
    variants = ["no-verify", "default", "forced-check"] + (["baseline"] if args.baseline else [])
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for v in variants[i % len(variants):] + variants[: i % len(variants)]:  # rotate the order
                root = args.baseline if v == "baseline" else ROOT
                times[v].append(run("default" if v == "baseline" else v, root, Path(tmp) / f"{v}-{i}"))
    load = os.getloadavg()
    base = statistics.median(times["no-verify"]) if args.repeat else 0.0
    if args.repeat:
        print(f"attnviz text (README command, default model), {args.repeat} runs each, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print(f"{'variant':<14} {'median s':>9} {'fastest s':>10} {'vs no-verify':>13}")
        for v in variants:
            med = statistics.median(times[v])
            print(f"{v:<14} {med:>9.2f} {min(times[v]):>10.2f} {100 * (med / base - 1):>+12.1f}%")
    if args.inprocess:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
        done = subprocess.run([sys.executable, "-c", INPROCESS, str(args.inprocess)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"in-process run failed: {done.stderr.strip()[-400:]}")
        load = os.getloadavg()
        print(f"\nin one warm process (attnviz.pipelines.text.run, model loaded each call), {args.inprocess} runs each, load average {load[0]:.2f}")
        print(f"{'variant':<14} {'median s':>9} {'fastest s':>10} {'vs no-verify':>13} {'CPU s':>10} {'CPU vs no-v.':>13}")
        print(done.stdout.rstrip())


if __name__ == "__main__":
    main()
