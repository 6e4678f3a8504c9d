"""Benchmark ``attnviz detect`` against a plain forward of the same model (issue 16).

    python benchmarks/detect.py              # DETR-R50 and Deformable DETR sized models, two runs each
    python benchmarks/detect.py --repeat 1

The models have the architecture and size of ``facebook/detr-resnet-50`` (41 M parameters) and
``SenseTime/deformable-detr`` (40 M) with random weights built from their default configs (ResNet-50 from
its config; the Hub is offline here), and their processors' default resize (shortest edge 800 pixels).
The photo is ``samples/rocket.jpg`` (640x427).

Each run is a whole process. The baseline is what a user writes without attnviz: import transformers,
load the model and processor, preprocess, one forward (``torch.inference_mode``) and
``post_process_object_detection``. attnviz is ``python -m attnviz detect PHOTO --model F --out TMP``, once
with the defaults (detections.png and one figure per object, at most 10: the random DETR finds nothing above 0.5,
so its 3 top-scoring queries are drawn; the random Deformable DETR's sigmoid scores sit near 0.5, so 100 boxes pass
and 10 are drawn) and once with ``--object 0`` (detections.png and one object). Time is the process's wall time; peak RSS the child's ``ru_maxrss``, read in
a fresh wrapper process per run. The best of ``--repeat`` runs is kept. Target: attnviz within 1.3x the time
and 1.2x the peak memory of the plain forward. Results: a table on stdout and ``benchmarks/DETECT.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _process import one_run  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHOTO = ROOT / "samples" / "rocket.jpg"
TIME_TARGET, MEMORY_TARGET = 1.3, 1.2


PLAIN = """
import sys, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForObjectDetection
model = AutoModelForObjectDetection.from_pretrained(sys.argv[1]).eval()
processor = AutoImageProcessor.from_pretrained(sys.argv[1])
image = Image.open(sys.argv[2]).convert("RGB")
with torch.inference_mode():
    out = model(**processor(images=image, return_tensors="pt"))
res = processor.post_process_object_detection(out, threshold=0.5, target_sizes=[(image.height, image.width)])
print(len(res[0]["scores"]))
"""


def build(folder: Path, kind: str) -> Path:
    import torch
    import transformers as T

    path = folder / kind
    backbone = dict(backbone_config=T.ResNetConfig(out_features=["stage2", "stage3", "stage4"] if kind != "detr" else ["stage4"]),
                    use_pretrained_backbone=False, use_timm_backbone=False)
    if kind == "detr":
        config, processor = T.DetrConfig(**backbone), T.DetrImageProcessor()
    else:
        config, processor = T.DeformableDetrConfig(**backbone), T.DeformableDetrImageProcessor()
    torch.manual_seed(0)
    T.AutoModelForObjectDetection.from_config(config).eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    lines = [
        "# `attnviz detect` vs a plain forward of the same model",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; best of "
        f"{args.repeat} whole-process runs each; `python benchmarks/detect.py`. Random weights at the real models' "
        "sizes (the Hub is offline here); photo 640x427, resized by the processor to 800 pixels high.",
        "",
        "| model | attnviz run | figures | plain forward (s) | attnviz detect (s) | time ratio | plain peak RSS (MiB) | attnviz peak RSS (MiB) | memory ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    verdicts: list[bool] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = PHOTO
        for kind, name in (("detr", "DETR-R50 (41 M)"), ("deformable_detr", "Deformable DETR (40 M)")):
            model = build(folder, kind)
            plain = [one_run(["-c", PLAIN, str(model), str(image)]) for _ in range(args.repeat)]
            pt, pm = min(r[0] for r in plain), min(r[1] for r in plain)
            for variant, extra in (("defaults", []), ("--object 0", ["--object", "0"])):
                outs = [folder / f"out-{kind}-{variant[:2]}-{i}" for i in range(args.repeat)]
                ours = [one_run(["-m", "attnviz", "detect", str(image), "--model", str(model), *extra, "--out", str(o)])
                        for o in outs]
                figures = len(list(outs[0].glob("*.png")))
                at, am = min(r[0] for r in ours), min(r[1] for r in ours)
                ok = at / pt <= TIME_TARGET and am / pm <= MEMORY_TARGET
                verdicts.append(ok)
                lines.append(f"| {name} | `{variant}` | {figures} | {pt:.2f} | {at:.2f} | {at / pt:.2f}x | {pm:.0f} | "
                             f"{am:.0f} | {am / pm:.2f}x |")
    lines += ["", f"Target: within {TIME_TARGET}x the time and {MEMORY_TARGET}x the peak memory: met in "
              f"{sum(verdicts)} of {len(verdicts)} rows."]
    table = "\n".join(lines) + "\n"
    print(table)
    (HERE / "DETECT.md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
