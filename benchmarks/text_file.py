"""Benchmark ``attnviz text --text-file`` on a 15 MiB file against a 1 MiB file (issue 21, item 9).

    python benchmarks/text_file.py             # 1 MiB and 15 MiB, two runs each
    python benchmarks/text_file.py --repeat 1

Each run is a whole process, ``python -m attnviz text --text-file F --out TMP`` with the default
model (sentence-transformers/all-MiniLM-L6-v2, offline) and every default view written. The files
are ``samples/corpus.txt`` repeated to the size. Time is the process's wall time (imports, loading,
figures included); peak RSS is the child's ``ru_maxrss`` (``resource.getrusage(RUSAGE_CHILDREN)``
read in a fresh wrapper process per run, so runs do not mask each other). The best of ``--repeat``
runs is kept. Target: the 15 MiB file within 1.2x the time and 1.2x the peak memory of the 1 MiB file.
Results: a table on stdout and ``benchmarks/TEXT_FILE.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES_MIB = (1, 15)
TARGET = 1.2

WRAPPER = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
print(rc, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def make_file(folder: Path, mib: int) -> Path:
    base = (ROOT / "samples" / "corpus.txt").read_text(encoding="utf-8")
    text = base * (mib * 2**20 // len(base.encode("utf-8")) + 1)
    path = folder / f"text-{mib}MiB.txt"
    path.write_bytes(text.encode("utf-8")[: mib * 2**20].decode("utf-8", "ignore").encode("utf-8"))
    return path


def one_run(path: Path, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "attnviz", "text", "--text-file", str(path),
           "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    rc, wall, rss_kib = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.split()
    if rc != "0":
        raise SystemExit(f"attnviz exited {rc} on {path.name}")
    return float(wall), int(rss_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for mib in SIZES_MIB:
            path = make_file(folder, mib)
            runs = [one_run(path, folder / f"out-{mib}-{i}") for i in range(args.repeat)]
            rows[mib] = (min(r[0] for r in runs), min(r[1] for r in runs))
    base_t, base_m = rows[SIZES_MIB[0]]
    lines = [
        "# `attnviz text --text-file`: 15 MiB vs 1 MiB",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"best of {args.repeat} whole-process runs each; `python benchmarks/text_file.py`.",
        "",
        "| file | wall time (s) | time ratio | peak RSS (MiB) | memory ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for mib, (t, m) in rows.items():
        lines.append(f"| {mib} MiB | {t:.2f} | {t / base_t:.2f}x | {m:.0f} | {m / base_m:.2f}x |")
    t, m = rows[SIZES_MIB[-1]]
    verdict = "met" if t / base_t <= TARGET and m / base_m <= TARGET else "NOT met"
    lines += ["", f"Target: 15 MiB within {TARGET}x the time and memory of 1 MiB: {verdict}."]
    table = "\n".join(lines) + "\n"
    print(table)
    (HERE / "TEXT_FILE.md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
