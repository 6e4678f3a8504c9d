"""``attnviz image`` as a library call: a photo in, per-head attention over the patch grid, attention rollout,
predictions, attention sinks and the figures out.

::

    from attnviz.pipelines.image import ImageRequest, run
    from attnviz.pipelines.common import ModelRequest, OutputRequest

    run_ = run(ImageRequest("photo.jpg", model=ModelRequest("../shared/models/deit-tiny-patch16-224"),
                            output=OutputRequest(out="figures")))
    run_.rollout               # float32 [rows, cols]: the [CLS] row of the rollout (Abnar & Zuidema 2020)
    run_.files                 # (Path('figures/report.png'), ...)
    run_.to_json()             # what `attnviz image ... --json` prints

The photo, the layer/head ranges, ``--patch`` and the output paths are checked against the config
and image processor before the weights load; all files are written together at the end, or none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import UsageError
from attnviz.models import DEFAULT_IMAGE_MODEL
from attnviz.pipelines.common import (
    ModelRequest, OutputRequest, StyleRequest, mark_random_weights, notify, notify_left_alone, parse_views, quiet_libraries,
    verification_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.render.layout import Style
    from attnviz.types import ImageAttention

#: The views ``attnviz image`` can write (``--views``); ``rollout`` includes rollout-no-sinks, ``patch`` needs --patch.
IMAGE_VIEWS = ("report", "heads", "rollout", "patch", "predictions")


@dataclass(frozen=True)
class ImageRequest:
    """Everything ``attnviz image`` takes (see ``attnviz image --help`` and README "Images").

    ``path``: the photo; ``layer``/``head`` (0-based, negative from the end): the per-head view (default:
    the last layer, the head mean); ``head_fusion`` (mean, max, min) and ``discard_ratio`` (0..1): the
    rollout settings; ``patch``: ``"X,Y"`` photo pixels (after EXIF rotation) whose patch's attention to
    show; ``views``: any of :data:`IMAGE_VIEWS` (comma-separated string or tuple); ``method``: registered
    methods to draw besides the views (``"relevance"``, ``"relevance,grad-attention"``, ``"all"``; see
    :data:`attnviz.analysis.explain.IMAGE_METHODS`), each as ``method-NAME`` and, for several, side by side
    as ``methods``; ``target_class``: the class the gradient methods explain (default: the top class).
    """

    path: str
    layer: int | None = None
    head: int | None = None
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    patch: str | None = None
    views: str | tuple[str, ...] = IMAGE_VIEWS
    method: str | tuple[str, ...] = ()
    target_class: int | None = None
    model: ModelRequest = ModelRequest(DEFAULT_IMAGE_MODEL)
    output: OutputRequest = OutputRequest()
    style: StyleRequest = StyleRequest()


@dataclass(frozen=True)
class ImageRun:
    """What one ``attnviz image`` run produced: the capture, the rollout map, the sink patches, the files;
    ``to_json()`` is ``--json``."""

    result: "ImageAttention"
    path: str
    layer: int
    head: int | None
    head_fusion: str
    discard_ratio: float
    sinks: tuple = ()
    patch: tuple | None = None  # (x, y, row, col)
    files: tuple[Path, ...] = ()
    save_attn: Path | None = None
    random_weights: str | None = None
    style: "Style | None" = None
    views: tuple[str, ...] = ()
    rollout: Any = None  # float32 [rows, cols] tensor
    explanation: Any = None  # attnviz.analysis.explain.Explanation (with --method)

    def to_json(self) -> dict:
        """The ``--json`` document (plain JSON types only)."""
        from attnviz.render.layout import DEFAULT_STYLE, model_reference

        r = self.result
        style = self.style or DEFAULT_STYLE
        doc = {
            "model": model_reference(r.model_id),
            "label": style.model_label(r.model_id),
            "model_type": r.model_type,
            "backend": r.backend,
            "random_weights": self.random_weights,
            "image": {"path": self.path, "width": r.image.width, "height": r.image.height},
            "input_size": list(r.input_size),
            "crop_box": [round(float(v), 3) for v in r.crop_box],
            "grid": list(r.grid),
            "prefix_tokens": r.prefix_tokens,
            "cls_index": r.cls_index,
            "num_layers": r.num_layers,
            "num_heads": r.num_heads,
            "view": {"layer": self.layer, "head": self.head},
            "rollout": {"head_fusion": self.head_fusion, "discard_ratio": self.discard_ratio,
                        "row": "[CLS]" if r.cls_index is not None else "mean of all tokens"},
        }
        if r.predictions:
            doc["predictions"] = [{"label": p.label, "score": round(p.score, 6)} for p in r.predictions]
        else:
            doc["predictions"] = None
        doc["sink_patches"] = [s.to_dict() for s in self.sinks]
        doc["style"] = style.describe()
        doc["views"] = list(self.views)
        doc.update(_maps_json(self))
        if self.explanation is not None:
            doc.update(self.explanation.to_json())
        if self.patch is not None:
            x, y, row, col = self.patch
            doc["patch"] = {"x": x, "y": y, "row": row, "col": col}
        doc["files"] = [str(p) for p in self.files]
        doc["save_attn"] = str(self.save_attn) if self.save_attn else None
        doc.update(verification_json(r.verification))
        return doc



def parse_patch(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageError(f"--patch must be X,Y in pixels of the photo (e.g. --patch 120,80), not '{text}'") from None
    if not (x == x and y == y) or x in (float("inf"), float("-inf")) or y in (float("inf"), float("-inf")):
        raise UsageError(f"--patch must be finite pixel coordinates, not '{text}'")
    return x, y


def run(request: ImageRequest) -> ImageRun:
    """Do the work of ``attnviz image`` and return what was produced (nothing is printed).

    Returns:
        :class:`ImageRun`; ``run.to_json()`` is the ``--json`` document.

    Raises:
        UsageError (2), ModelError (3), InputError (4), OutputError (5): one line each; nothing is written then.
    """
    path, layer, head = request.path, request.layer, request.head
    head_fusion, discard_ratio, out = request.head_fusion, request.discard_ratio, request.output
    from attnviz.models import check_layer_head, resolve_model
    check_layer_head(resolve_model(request.model.name), layer, head, "vision_config")  # milliseconds: config.json, no imports
    from attnviz.errors import UsageError
    from attnviz.report import RunOutput, check_tensor_path, model_files

    figure_formats, html = out.formats()
    point = parse_patch(request.patch)
    from attnviz.inputs.imagefile import load_image

    photo = load_image(path)  # a bad file fails before any model is loaded
    if point is not None and not (0 <= point[0] < photo.width and 0 <= point[1] < photo.height):
        # the crop is known only from the processor (transformers); a point off the photo is refused at once
        raise UsageError(f"--patch {point[0]:g},{point[1]:g} is outside the photo: x in [0, {photo.width}), "
                         f"y in [0, {photo.height})")
    from attnviz.methods.rollout import HEAD_FUSIONS

    if head_fusion not in HEAD_FUSIONS:
        raise UsageError(f"--head-fusion must be one of {', '.join(HEAD_FUSIONS)}, not '{head_fusion}'")
    if not 0.0 <= discard_ratio < 1.0:
        raise UsageError(f"--discard-ratio must be in [0, 1), not {discard_ratio}")
    views = request.views
    chosen_views = parse_views(views if isinstance(views, str) else ",".join(views), IMAGE_VIEWS)
    style = request.style.style({"head_fusion": head_fusion, "discard_ratio": discard_ratio})

    tensor_path = check_tensor_path(out.save_attn) if out.save_attn else None
    from attnviz.analysis.explain import TARGETED, parse_methods

    chosen_methods = parse_methods(request.method)
    if request.target_class is not None and not any(m in TARGETED for m in chosen_methods):
        raise UsageError("--target-class is the class the gradient methods explain: add --method relevance "
                         "(or grad-attention)")

    quiet_libraries()
    from attnviz.inputs.patches import attend_image, load_image_model, patch_at, preprocess
    from attnviz.analysis.patches import image_plan, image_sinks, rollout_map
    im = load_image_model(request.model.name, request.model.load_options(), weights=False)  # config and processor only: checks come first
    from attnviz.analysis.explain import applicable_methods

    chosen_methods = applicable_methods(request.method, chosen_methods, targeted=im.info.classifier)
    n_layers, n_heads = im.info.num_layers, im.info.num_heads
    layer = -1 if layer is None else layer
    if not -n_layers <= layer < n_layers:
        raise UsageError(f"--layer {layer} is out of range: this model has {n_layers} layers (0..{n_layers - 1})")
    layer %= n_layers
    if head is not None:
        if not -n_heads <= head < n_heads:
            raise UsageError(f"--head {head} is out of range: this model has {n_heads} heads per layer (0..{n_heads - 1})")
        head %= n_heads
    patch_info = None
    stems = {"report": "report", "heads": f"attention-layer{layer}", "rollout": "rollout"}
    names = [f"{stems[v]}.{f}" for f in figure_formats for v in chosen_views if v in stems]
    # written only when sinks are found or the model classifies: checked now all the same, so a clash costs no loading
    if "rollout" in chosen_views:
        names += [f"rollout-no-sinks.{f}" for f in figure_formats]
    if "predictions" in chosen_views and im.info.classifier:
        names += [f"predictions.{f}" for f in figure_formats]
    if point is not None:
        _, box, grid, _ = preprocess(im, photo)
        row, col = patch_at(box, grid, (photo.width, photo.height), *point)
        patch_info = (point[0], point[1], row, col)
        names += [f"{_patch_stem(point[0], point[1], layer)}.{f}" for f in figure_formats if "patch" in chosen_views]
    names += [f"method-{m}.{f}" for f in figure_formats for m in chosen_methods]
    if len(chosen_methods) > 1:
        names += [f"methods.{f}" for f in figure_formats]
    if html:
        names.append("report.html")
    output = RunOutput(
        out.out, command="image", force=out.force, protect=model_files(im.source.location),
        settings={"model": im.source.model_id, "image": str(path), "layer": layer, "head": head, "head_fusion": head_fusion,
                  "discard_ratio": discard_ratio, "patch": request.patch, "format": out.format, "size": request.style.size,
                  "views": list(chosen_views), "save_attn": str(tensor_path) if tensor_path else None,
                  "method": list(chosen_methods), "target_class": request.target_class},
    )
    output.check(names, tensor=tensor_path)

    im = im.with_weights()
    note = mark_random_weights(output, im.model)
    if getattr(im.model, "attnviz_new_head", ()):
        notify(f"'{im.source.model_id}' has no trained classification head in its checkpoint: no predictions are shown")
    plan = image_plan(im, (layer,), full=tensor_path is not None or html, head_fusion=head_fusion, discard_ratio=discard_ratio)
    result = attend_image(photo, im, plan=plan, verify=request.model.verify)
    if result.verification is not None and result.verification.notice:
        notify(result.verification.notice)
    elif result.backend == "eager":
        notify(f"{im.model_type} does not use transformers' AttentionInterface: captured with backend 'eager' (output_attentions)")
    rollout = rollout_map(result, head_fusion, discard_ratio)
    sinks = image_sinks(result, rollout)

    explanation = None
    if chosen_methods:
        from attnviz.analysis.explain import explain_image

        explanation = explain_image(im, result, chosen_methods, layer=layer, target_class=request.target_class, rollout=rollout)
    run_ = ImageRun(result, str(path), layer, head, head_fusion, discard_ratio, tuple(sinks), patch_info, random_weights=note,
                    style=style, views=chosen_views, rollout=rollout, explanation=explanation)
    with output:
        files = [p for f in figure_formats for p in _write_views(run_, rollout, output, f)]
        if html:
            from attnviz.html import image_page

            settings = {"head_fusion": head_fusion, "discard_ratio": discard_ratio}
            page = image_page(result, rollout, settings, sinks, layer, head, label=style.model_label(result.model_id))
            files.append(output.page(page, "report"))
        if tensor_path is not None:
            _save_attention(result, rollout, output.tensor_target(tensor_path), head_fusion, discard_ratio, explanation)
    notify_left_alone(output)
    return replace(run_, files=tuple(files), save_attn=output.tensor)


def _patch_stem(x: float, y: float, layer: int) -> str:
    return f"patch-{x:g}-{y:g}-layer{layer}"


def _write_views(run: ImageRun, rollout, output, fmt: str) -> list[Path]:
    from attnviz.render.image import heads_view, patch_view, predictions_view, report_view, rollout_view

    r = run.result
    settings = {"head_fusion": run.head_fusion, "discard_ratio": run.discard_ratio}
    heads = None if run.head is None else [run.head]
    style, views = run.style, run.views or IMAGE_VIEWS
    files: list[Path] = []
    if "heads" in views:
        fig = heads_view(r, run.layer, heads=heads, sinks=list(run.sinks), style=style)
        files.append(output.figure(fig, f"attention-layer{run.layer}", fmt))
    if "rollout" in views:
        files.append(output.figure(rollout_view(r, rollout, settings, sinks=list(run.sinks), style=style), "rollout", fmt))
        if run.sinks:
            fig = rollout_view(r, rollout, settings, sinks=list(run.sinks), masked=True, style=style)
            files.append(output.figure(fig, "rollout-no-sinks", fmt))
    if run.patch is not None and "patch" in views:
        x, y, row, col = run.patch
        fig = patch_view(r, run.layer, row, col, point=(x, y), heads=heads, sinks=list(run.sinks), style=style)
        files.append(output.figure(fig, _patch_stem(x, y, run.layer), fmt))
    if r.predictions and "predictions" in views:
        files.append(output.figure(predictions_view(r, style=style), "predictions", fmt))
    files += _write_methods(run, output, fmt)
    if "report" not in views:
        return files
    fig = report_view(
        r, layer=run.layer, head=run.head, rollout=rollout, settings=settings, sinks=list(run.sinks),
        files=[p.name for p in files], style=style,
    )
    report = output.figure(fig, "report", fmt)
    return [report] + files


def _write_methods(run: ImageRun, output, fmt: str) -> list[Path]:
    """``method-NAME`` per method and, for several, ``methods`` side by side."""
    from attnviz.render.image import method_view, methods_view

    e = run.explanation
    if e is None:
        return []
    files = [output.figure(method_view(run.result, m, e.target, style=run.style), f"method-{m.method}", fmt) for m in e.maps]
    if len(e.maps) > 1:
        files.append(output.figure(methods_view(run.result, e.maps, e.target, style=run.style), "methods", fmt))
    return files


def _save_attention(result, rollout, path: Path, head_fusion: str, discard_ratio: float, explanation=None) -> Path:
    """``attentions`` [L, H, T, T] and ``rollout`` [rows, cols] (raw), float32, with metadata; with methods,
    ``method/NAME`` [rows, cols] each."""
    from attnviz.report import save_tensors

    meta = {
        "model": result.model_id,
        "grid": list(result.grid),
        "prefix_tokens": result.prefix_tokens,
        "cls_index": result.cls_index,
        "backend": result.backend,
        "rollout_head_fusion": head_fusion,
        "rollout_discard_ratio": discard_ratio,
        "rollout_row": "[CLS]" if result.cls_index is not None else "mean of all tokens",
        "image_size": [result.image.width, result.image.height],
        "crop_box": [float(v) for v in result.crop_box],
    }
    tensors = {"attentions": result.attention.full.float(), "rollout": rollout.float()}
    if explanation is not None:
        tensors.update({f"method/{m.method}": m.values.float().contiguous().clone() for m in explanation.maps})
        meta["methods"] = [m.method for m in explanation.maps]
        meta["target"] = explanation.target.to_dict() if explanation.target is not None else None
    return save_tensors(path, tensors, meta)


def _maps_json(run: ImageRun) -> dict:
    """What the image figures draw: per-head [CLS] maps of the chosen layer (with a summary) and the rollout."""
    from attnviz.analysis.patches import cls_attention

    r = run.result
    out: dict = {}
    if r.attention.has_layer(run.layer):
        grid = cls_attention(r, run.layer)  # [H, rows, cols]
        rows, cols = r.grid
        heads = []
        for h in range(grid.shape[0]):
            g = grid[h]
            top = int(g.argmax())
            heads.append({
                "head": h, "to_patches": round(float(g.sum()), 6), "to_prefix": round(1 - float(g.sum()), 6),
                "max": round(float(g.max()), 6), "max_patch": {"row": top // cols, "col": top % cols},
                "map": [[round(float(v), 6) for v in row] for row in g.tolist()],
            })
        out["cls_maps"] = {"layer": run.layer, "query": "[CLS]" if r.cls_index is not None else "mean of all tokens",
                           "scale": run.style.scale if run.style is not None else "shared", "heads": heads,
                           "mean": [[round(float(v), 6) for v in row] for row in grid.mean(dim=0).tolist()]}
    if run.rollout is not None:
        out["rollout_map"] = [[round(float(v), 8) for v in row] for row in run.rollout.float().tolist()]
    return out
