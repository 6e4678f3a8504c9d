"""One benchmark run = one fresh process: its wall time and peak RSS, measured by a wrapper process."""

from __future__ import annotations

import os
import subprocess
import sys

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
