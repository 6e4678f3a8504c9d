"""One benchmark run = one fresh process: its wall time and peak RSS, measured by a wrapper process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WRAPPER = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
print(rc, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def one_run(cmd: list[str]) -> tuple[float, float]:
    """Run ``python *cmd`` offline (``HF_HUB_OFFLINE=1``, Agg backend): (wall seconds, peak RSS MiB). Exits on failure."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    rc, wall, rss_kib = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, *cmd], capture_output=True, text=True,
                                       env=env, check=True).stdout.split()
    if rc != "0":
        raise SystemExit(f"exited {rc}: {' '.join(cmd)}")
    return float(wall), int(rss_kib) / 1024


def best_of(runs: list[dict], label: str, floor_like: bool) -> dict:
    """One measurement from repeated child runs (dicts with ``seconds``/``peak_rss_mb``, or ``error``): the fastest
    time, with the highest peak RSS (the lowest for a floor, so a floor is never overstated); printed as ``label``."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        print(f"{label}: {runs[0]['error']}", flush=True)
        return runs[0]
    best = dict(min(ok, key=lambda r: r["seconds"]))
    best["peak_rss_mb"] = (min if floor_like else max)(r["peak_rss_mb"] for r in ok)
    print(f"{label}: {best['seconds']:.2f} s, {best['peak_rss_mb']:.0f} MB", flush=True)
    return best


def run_child(script: str, args: list[str], threads: int, timeout: float) -> dict:
    """Run ``python script *args`` in a fresh process with ``threads`` BLAS/OpenMP threads, offline, the project
    on ``PYTHONPATH``; returns the JSON dict its last stdout line prints, or ``{"error": ...}`` with its last lines."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])
