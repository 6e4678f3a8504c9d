"""``attnviz detect`` as a library call: a photo and an object-detection Transformer in, the detections and where
each object's query looks out.

::

    from attnviz.pipelines.detect import DetectRequest, run
    from attnviz.pipelines.common import ModelRequest, OutputRequest

    run_ = run(DetectRequest("samples/rocket.jpg", model=ModelRequest("facebook/detr-resnet-50"),
                             output=OutputRequest(out="figures")))
    run_.detections[0]      # Detection(index=0, query=17, label='...', score=0.98, box=(x0, y0, x1, y1))
    run_.to_json()          # what `attnviz detect ... --json` prints

The photo, the output paths and the config are checked before the weights load; every file is written together at
the end (:class:`attnviz.report.RunOutput`), or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import UsageError
from attnviz.pipelines.common import (
    ModelRequest, OutputRequest, StyleRequest, mark_random_weights, notify, notify_left_alone, quiet_libraries,
    verification_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.render.layout import Style

DEFAULT_DETECT_MODEL = "facebook/detr-resnet-50"


@dataclass(frozen=True)
class DetectRequest:
    """Everything ``attnviz detect`` takes (see ``attnviz detect --help`` and README "Detection").

    ``image``: the photo; ``threshold``: the score a detection needs (0..1); ``object``: draw only this detection
    (0-based index in score order; None: every one); ``point``: ``"X,Y"`` photo pixels whose encoder attention to
    draw; ``layer``: decoder layer of the object views (0-based, negative from the end; default the last);
    ``max_objects``: draw the figures of at most this many top-scoring detections (0: every one; ``object`` wins);
    ``method``: registered methods that explain one detection -- ``object``, else the top-scoring one -- by its class
    logit (:func:`attnviz.analysis.explain.explain_detection`), drawn side by side as ``object-I-methods``.
    """

    image: Path
    threshold: float = 0.5
    object: int | None = None
    point: str | None = None
    layer: int | None = None
    max_objects: int = 10
    method: str | tuple[str, ...] = ()
    model: ModelRequest = ModelRequest(DEFAULT_DETECT_MODEL)
    output: OutputRequest = OutputRequest()
    style: StyleRequest = StyleRequest()


@dataclass(frozen=True)
class DetectRun:
    """What one ``attnviz detect`` run produced; ``to_json()`` is ``--json``."""

    model_id: str
    model_type: str
    attention: str
    backend: str
    geometry: Any
    num_queries: int
    feature_levels: list[dict]
    detections: list
    found: bool
    threshold: float
    layer: int
    objects: list[dict]
    point: dict | None
    files: tuple[Path, ...]
    save_attn: Path | None
    random_weights: str | None
    style: "Style"
    verification: Any = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    explanation: Any = None  # attnviz.analysis.explain.Explanation (with --method)
    method_object: int | None = None

    def to_json(self) -> dict:
        """The ``--json`` document (plain JSON types only)."""
        from attnviz.render.layout import model_reference

        return {
            "model": model_reference(self.model_id),
            "label": self.style.model_label(self.model_id),
            "model_type": self.model_type,
            "backend": self.backend,
            "random_weights": self.random_weights,
            **verification_json(self.verification),
            "attention": self.attention,
            "image": {"width": self.geometry.photo[0], "height": self.geometry.photo[1]},
            "geometry": self.geometry.to_json(),
            "num_queries": self.num_queries,
            "feature_levels": self.feature_levels,
            "threshold": self.threshold,
            "found": self.found,
            "detections": [d.to_json() for d in self.detections],
            "layer": self.layer,
            "objects": self.objects,
            "point": self.point,
            "notes": list(self.notes),
            "style": self.style.describe(),
            "files": [str(p) for p in self.files],
            "save_attn": str(self.save_attn) if self.save_attn else None,
            **({"method_object": self.method_object, **self.explanation.to_json()} if self.explanation is not None else {}),
        }


def parse_point(text: str | None) -> tuple[float, float] | None:
    """``"X,Y"`` -> (x, y) photo pixels. Raises UsageError for anything else."""
    if text is None:
        return None
    parts = str(text).split(",")
    try:
        x, y = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--point must be X,Y in photo pixels (e.g. 120,80), not '{text}'") from None
    return x, y


def _check_request(request: DetectRequest):
    if not 0.0 <= request.threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1, not {request.threshold:g}")
    if request.object is not None and request.object < 0:
        raise UsageError(f"--object must be 0 or more, not {request.object}")
    if request.max_objects < 0:
        raise UsageError(f"--max-objects must be 0 (every detection) or more, not {request.max_objects}")
    figure_formats, html = request.output.formats()
    return figure_formats, html, parse_point(request.point), request.style.style()


def run(request: DetectRequest) -> DetectRun:
    """Do the work of ``attnviz detect`` and return what was produced (nothing is printed).

    Raises:
        UsageError (2): bad options, ``--object`` out of range, ``--point`` outside the photo, ``--layer`` out of
        range. ModelError (3): not a detector, unloadable. InputError (4): the photo cannot be read.
        OutputError (5): the files cannot be written. Nothing is written when any of them is raised.
    """
    import numpy as np

    from attnviz.inputs.detection import (
        ENCODER_ALL, ENCODER_LAST, ENCODER_NONE, attend_verified, detections, feature_strides, load_detector, preprocess,
    )
    from attnviz.inputs.imagefile import load_image
    from attnviz.report import RunOutput, check_tensor_path, model_files

    quiet_libraries()
    figure_formats, html, point, style = _check_request(request)
    photo = load_image(request.image)
    if point is not None and not (0 <= point[0] < photo.width and 0 <= point[1] < photo.height):
        raise UsageError(f"--point {request.point} is outside the photo ({photo.width}x{photo.height} pixels)")
    out = request.output
    tensor_path = check_tensor_path(out.save_attn) if out.save_attn else None
    det = load_detector(request.model.name, request.model.load_options(), weights=False)
    _check_layer(request.layer, _config_layers(det), "model" if det.yolos else "decoder")
    output = RunOutput(out.out, command="detect", force=out.force, protect=model_files(det.source.location),
                       settings={"model": det.source.model_id, "image": str(request.image), "threshold": request.threshold,
                                 "object": request.object, "max_objects": request.max_objects,
                                 "point": request.point, "layer": request.layer,
                                 "format": out.format, "size": request.style.size,
                                 "save_attn": str(tensor_path) if tensor_path else None})
    from attnviz.analysis.explain import DETECT_METHODS, parse_methods

    chosen_methods = parse_methods(request.method, DETECT_METHODS)
    from attnviz.analysis.explain import applicable_methods

    chosen_methods = applicable_methods(request.method, chosen_methods, targeted=det.head)
    stems = ["detections"] + ([f"object-{request.object}"] if request.object is not None else [])
    if chosen_methods:
        from attnviz.inputs.detection import DEFORMABLE

        if det.attention == DEFORMABLE:
            raise UsageError(f"--method: {det.model_type} uses deformable attention (sampling points), which has no "
                             "attention matrix for these methods; DETR, Conditional DETR and YOLOS have one")
        stems.append(f"object-{request.object if request.object is not None else 0}-methods")
    stems += [f"point-{int(point[0])}-{int(point[1])}"] if point is not None else []
    output.check([f"{stem}.{f}" for stem in stems for f in figure_formats] + (["report.html"] if html else []),
                 tensor=tensor_path)
    det = det.with_weights()
    note = mark_random_weights(output, det.model)
    inputs, geometry = preprocess(det, photo)
    keep = ENCODER_ALL if tensor_path is not None else ENCODER_LAST if point is not None else ENCODER_NONE
    captured, verification = attend_verified(det, inputs, request.model.verify, keep)
    found_list, found = detections(det, captured.outputs, geometry, request.threshold)
    if request.object is not None and request.object >= len(found_list):
        raise UsageError(f"--object {request.object} is out of range: there are {len(found_list)} detections "
                         f"(0..{len(found_list) - 1})" if found_list else f"--object {request.object}: there are no detections")
    num_layers = _num_layers(captured)
    layer = _check_layer(request.layer, num_layers, "model" if det.yolos else "decoder")
    notes = []
    if det.head and not found:
        notes.append(f"no detection scored {request.threshold:g} or more; showing the {len(found_list)} top-scoring queries")
        notify(notes[-1])
    strides = feature_strides(captured.levels, geometry)
    levels_json = [{"stride": s, "grid": list(g)} for s, g in zip(strides, captured.levels)]
    picked = [d for d in found_list if request.object is None or d.index == request.object]
    if request.object is None and 0 < request.max_objects < len(picked):
        notes.append(f"drew the figures of the {request.max_objects} top-scoring of {len(picked)} detections "
                     "(--max-objects N, 0 for all; --object I for one)")
        notify(notes[-1])
        picked = picked[:request.max_objects]
    pixels = np.asarray(photo)
    label = style.model_label(det.source.model_id)
    from attnviz.pipelines import detect_views as views

    views_to_draw = [(d.index, *views.object_data(captured, d, layer, geometry, strides, pixels, label, style)) for d in picked]
    objects = [data for _, data, _ in views_to_draw]
    point_json = point_figure = None
    if point is not None:
        point_json, point_figure = views.point_data(captured, point, geometry, strides, pixels, label, style)
    explanation = method_object = None
    if chosen_methods:
        from attnviz.analysis.explain import explain_detection

        if not found_list:
            raise UsageError("--method explains a detection, but this model found none (it has no detection head)")
        explained = found_list[request.object if request.object is not None else 0]
        method_object = explained.index
        explanation = explain_detection(det, inputs, captured, explained, chosen_methods, layer=layer)
    result = DetectRun(det.source.model_id, det.model_type, captured.attention, captured.backend, geometry,
                       det.num_queries, levels_json, found_list, found, request.threshold, layer, objects, point_json, (),
                       None, note, style, verification, tuple(notes), explanation, method_object)
    with output:
        for fmt in figure_formats:
            output.figure(views.detections_figure(pixels, found_list, label, det, found, request.threshold, style), "detections", fmt)
        for index, _data, fig_for in views_to_draw:
            for fmt in figure_formats:
                output.figure(fig_for(), f"object-{index}", fmt)
        if point_figure is not None:
            for fmt in figure_formats:
                output.figure(point_figure(), f"point-{int(point[0])}-{int(point[1])}", fmt)
        if explanation is not None:
            for fmt in figure_formats:
                output.figure(views.methods_figure(pixels, explanation, found_list[method_object], geometry, label, style),
                              f"object-{method_object}-methods", fmt)
        if tensor_path is not None:
            views.save_attention(captured, output.tensor_target(tensor_path), det, geometry, levels_json)
        if html:
            from attnviz.html.detect import detect_page

            figures = {f"object-{index}": fig_for() for index, _data, fig_for in views_to_draw}
            if point_figure is not None:
                figures["point"] = point_figure()
            output.page(detect_page(result.to_json(), photo, figures, label), "report")
    notify_left_alone(output)
    return replace(result, files=tuple(output.files), save_attn=output.tensor)


def _check_layer(layer: int | None, num_layers: int | None, what: str = "decoder") -> int:
    """``--layer`` (None: the last; negative from the end) -> a 0-based layer. Raises UsageError out of range."""
    layer = -1 if layer is None else layer
    if num_layers is None:
        return layer
    if not -num_layers <= layer < num_layers:
        raise UsageError(f"--layer {layer} is out of range: the {what} has {num_layers} layers (0..{num_layers - 1})")
    return layer % num_layers


def _config_layers(det) -> int | None:
    """Decoder layers (YOLOS: layers) the config declares, before the weights load; None when it says nothing."""
    n = getattr(det.config, "num_hidden_layers" if det.yolos else "decoder_layers", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def _num_layers(captured) -> int:
    if captured.deformable is not None:
        return len(captured.deformable.weights.get("cross", ())) or 1
    return int(captured.cross.shape[0])
