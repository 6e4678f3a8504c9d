"""Benchmark ``attnviz heads`` peak memory on a corpus with one 50 MB line against a normal corpus (issue 21, item 9).

    python benchmarks/heads_memory.py            # 200 normal lines vs the same with one 50 MB line, two runs each
    python benchmarks/heads_memory.py --repeat 1 --mb 50

Each run is a whole process, ``python -m attnviz heads CORPUS --out TMP`` with the default model
(sentence-transformers/all-MiniLM-L6-v2, offline) and every default output written. The normal corpus is
the first 200 lines of ``samples/corpus.txt`` (repeated if shorter); the other is the same corpus with one
line of ``--mb`` MB ("word " repeated) in the middle. Peak RSS is the child's ``ru_maxrss``
(``resource.getrusage(RUSAGE_CHILDREN)`` read in a fresh wrapper process per run). The best of
``--repeat`` runs is kept. Target: the huge line's run within 1.2x the normal run's peak memory.
Results: a table on stdout (recorded by hand in ``benchmarks/HEADS.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 1.2
LINES = 200

WRAPPER = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t
print(rc, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def make_corpora(folder: Path, mb: int) -> dict[str, Path]:
    base = [l for l in (ROOT / "samples" / "corpus.txt").read_text(encoding="utf-8").splitlines() if l.strip()]
    lines = (base * (LINES // len(base) + 1))[:LINES]
    normal = folder / "normal.txt"
    normal.write_text("\n".join(lines) + "\n", encoding="utf-8")
    huge = folder / "huge-line.txt"
    with open(huge, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines[: LINES // 2]) + "\n")
        fh.write("word " * (mb * 1_000_000 // 5) + "\n")
        fh.write("\n".join(lines[LINES // 2 :]) + "\n")
    return {"normal corpus": normal, f"one {mb} MB line added": huge}


def one_run(path: Path, out: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "attnviz", "heads", str(path), "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    rc, wall, rss_kib = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.split()
    if rc != "0":
        raise SystemExit(f"attnviz exited {rc} on {path.name}")
    return float(wall), int(rss_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, path in make_corpora(folder, args.mb).items():
            runs = [one_run(path, folder / f"out-{path.stem}-{i}") for i in range(args.repeat)]
            rows[name] = (path.stat().st_size / 1e6, min(r[0] for r in runs), min(r[1] for r in runs))
    base = next(iter(rows.values()))
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"best of {args.repeat} whole-process runs each; `python benchmarks/heads_memory.py`.\n")
    print("| corpus | size (MB) | wall time (s) | peak RSS (MiB) | memory ratio (<= 1.2) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (size, t, m) in rows.items():
        print(f"| {name} | {size:.1f} | {t:.1f} | {m:.0f} | {m / base[2]:.2f}x |")
    worst = max(m / base[2] for _, _, m in rows.values())
    print(f"\n{'met' if worst <= TARGET else 'MISSED'}: peak memory ratio {worst:.2f}x (target {TARGET}x)")


if __name__ == "__main__":
    main()
