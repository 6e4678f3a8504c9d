"""``attnviz faithfulness`` as a library call: how faithful is each method's ranking of the input units?

::

    from attnviz.pipelines.faithfulness import FaithfulnessRequest, run
    from attnviz.pipelines.common import ModelRequest, OutputRequest

    run_ = run(FaithfulnessRequest("samples/", model=ModelRequest("../shared/models/deit-tiny-patch16-224"),
                                   output=OutputRequest(out="faith")))
    run_.scores            # (MethodScore(name='relevance', positive_auc=..., negative_auc=...), ...)
    run_.to_json()         # what `attnviz faithfulness ... --json` prints (= faithfulness.json)

For each photo (one file, or every image in a folder) and each method (:data:`attnviz.analysis.explain.IMAGE_METHODS`),
the patches are ranked by the method's [CLS] row and removed (replaced by ``baseline``) in ``steps`` slices,
most relevant first and least relevant first; the target class's probability (softmax) is recorded after each
slice (:mod:`attnviz.analysis.faithfulness`). ``seeds`` random orders give the baseline a method must beat.
The target is the top class of the unperturbed photo (or ``target_class``). Perturbed photos go through the
model in batches of ``batch_size``; identical perturbations (every order ends with every patch removed) are
forwarded once. All files are written together at the end, or none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import UsageError
from attnviz.models import DEFAULT_IMAGE_MODEL
from attnviz.pipelines.common import (
    ModelRequest, OutputRequest, StyleRequest, mark_random_weights, notify, notify_left_alone, quiet_libraries,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.render.layout import Style

#: Baselines a removed patch is replaced by ("auto": mean).
IMAGE_BASELINES = ("auto", "mean", "blur")
#: Baselines a removed token is replaced by ("auto": mask, else unk, else pad).
TEXT_BASELINES = ("auto", "mask", "unk", "pad")
#: Image files a folder is read for.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: At most this many photos from a folder.
MAX_INPUTS = 1000


@dataclass(frozen=True)
class FaithfulnessRequest:
    """Everything ``attnviz faithfulness`` takes (see ``attnviz faithfulness --help`` and README "Methods and
    their faithfulness").

    ``path``: a photo or a folder of photos (image classifiers), or a corpus file (text models: one text per line,
    or the ``column`` of a .jsonl/.csv/.parquet); ``text``: one text instead; ``max_length``: tokens per text;
    ``methods``: comma-separated names (default: all five); ``steps``: slices of the perturbation curve;
    ``baseline``: photos: ``mean`` (the photo's mean colour over the model input, the default) or ``blur`` (the
    photo blurred by one patch width, Pillow's Gaussian blur); texts: ``mask``, ``unk`` or ``pad`` (the token a
    removed token becomes; default: the first the tokenizer has, in that order); ``seeds``: random orders;
    ``batch_size``: perturbed photos per forward pass; ``layer``: the one-layer methods' layer (default: the
    last); ``target_class``: the class to follow (default: each photo's top class); ``limit``: photos at most.
    """

    path: str | None = None
    text: str | None = None
    column: str = "text"
    max_length: int | None = None
    methods: str | tuple[str, ...] = "all"
    steps: int = 10
    baseline: str = "auto"
    seeds: int = 5
    batch_size: int = 16
    layer: int | None = None
    target_class: int | None = None
    limit: int | None = None
    model: ModelRequest = ModelRequest(DEFAULT_IMAGE_MODEL)
    output: OutputRequest = OutputRequest()
    style: StyleRequest = StyleRequest()


@dataclass(frozen=True)
class MethodScore:
    """A method's areas under the perturbation curves, averaged over the inputs: ``positive_auc`` (most relevant
    removed first: lower is more faithful), ``negative_auc`` (least relevant first: higher is more faithful)."""

    name: str
    positive_auc: float
    negative_auc: float

    def to_dict(self) -> dict:
        return {"name": self.name, "positive_auc": round(self.positive_auc, 6), "negative_auc": round(self.negative_auc, 6)}


@dataclass(frozen=True)
class InputCurves:
    """One input's curves: its ``target`` (:class:`attnviz.signals.Target`), the unperturbed probability ``base``;
    ``path`` names the input (a photo's path, the start of a text)."""

    path: str
    target: Any
    base: float
    curves: tuple  # attnviz.analysis.faithfulness.Curve
    units: int = 0  # input units that could be removed (patches; tokens other than special ones and the explained one)


@dataclass(frozen=True)
class FaithfulnessRun:
    """What one ``attnviz faithfulness`` run produced; ``to_json()`` is ``--json`` (and faithfulness.json)."""

    model_id: str
    model_type: str
    methods: tuple[str, ...]
    inputs: tuple[InputCurves, ...]
    steps: int
    baseline: str
    seeds: int
    layer: int
    unit: str  # "patch" or "token"
    forward_passes: int
    signal_passes: dict
    random_weights: str | None = None
    style: "Style | None" = None
    files: tuple[Path, ...] = ()
    target_fixed: bool = False

    @property
    def scores(self) -> tuple[MethodScore, ...]:
        out = []
        for name in self.methods:
            pos = [c.auc for i in self.inputs for c in i.curves if c.method == name and c.order == "positive"]
            neg = [c.auc for i in self.inputs for c in i.curves if c.method == name and c.order == "negative"]
            out.append(MethodScore(name, sum(pos) / len(pos), sum(neg) / len(neg)))
        return tuple(out)

    @property
    def plural(self) -> str:
        """The unit in the plural: ``patches`` or ``tokens``."""
        return {"patch": "patches"}.get(self.unit, f"{self.unit}s")

    def random_summary(self) -> dict | None:
        """The random orders (None without ``seeds``): ``positive_auc`` = ``negative_auc`` (the mean over seeds and
        inputs; both orders are the same distribution), ``std`` (standard deviation over seeds of the mean over the
        inputs), ``min``/``max`` (of those per-seed means) and ``seeds``."""
        if not self.seeds:
            return None
        per_seed = []
        for s in range(self.seeds):
            aucs = [c.auc for i in self.inputs for c in i.curves if c.order == "random" and c.seed == s]
            per_seed.append(sum(aucs) / len(aucs))
        mean = sum(per_seed) / len(per_seed)
        std = math.sqrt(sum((a - mean) ** 2 for a in per_seed) / (len(per_seed) - 1)) if len(per_seed) > 1 else 0.0
        return {"positive_auc": round(mean, 6), "negative_auc": round(mean, 6), "std": round(std, 6), "seeds": self.seeds,
                "min": round(min(per_seed), 6), "max": round(max(per_seed), 6)}

    def mean_curve(self, method: str, order: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(fractions, probabilities)`` averaged over inputs (and seeds for ``random``); the fractions are the
        nominal ``k / steps`` (an input's own are ``round(k / steps * units) / units``)."""
        import numpy as np

        curves = [c for i in self.inputs for c in i.curves if c.method == method and c.order == order]
        fractions = tuple(k / self.steps for k in range(self.steps + 1))
        # each curve read at the nominal fractions, linearly between the fractions it was measured at
        probs = np.mean([np.interp(fractions, c.fractions, c.probabilities) for c in curves], axis=0)
        return fractions, tuple(float(p) for p in probs)

    def to_json(self) -> dict:
        from attnviz.render.layout import DEFAULT_STYLE, model_reference

        style = self.style or DEFAULT_STYLE
        return {
            "model": model_reference(self.model_id),
            "label": style.model_label(self.model_id),
            "model_type": self.model_type,
            "random_weights": self.random_weights,
            "unit": self.unit,
            "target": "the class given by --target-class (softmax probability)" if self.target_fixed
            else "each input's top class (softmax probability)",
            "layer": self.layer,
            "steps": self.steps,
            "baseline": self.baseline,
            "auc": f"trapezoid of the target probability over the fraction of {self.plural} removed (0..1); positive: most "
                   "relevant first, lower is more faithful; negative: least relevant first, higher is more faithful",
            "methods": [s.to_dict() for s in self.scores],
            "random": self.random_summary(),
            "forward_passes": self.forward_passes,
            "signal_passes": self.signal_passes,
            "inputs": [
                {"path": i.path, "target": i.target.to_dict(), "probability": round(i.base, 6), "units": i.units,
                 "fractions": [round(f, 6) for f in i.curves[0].fractions] if i.curves else [],
                 "curves": [{"method": c.method, "order": c.order, "seed": c.seed, "auc": round(c.auc, 6),
                             "probabilities": [round(p, 6) for p in c.probabilities]} for c in i.curves]}
                for i in self.inputs
            ],
            "fractions": [k / self.steps for k in range(self.steps + 1)],
            "files": [str(p) for p in self.files],
        }

    def table(self) -> dict[str, list]:
        """Per-input rows for faithfulness.parquet: one per curve."""
        cols: dict[str, list] = {k: [] for k in ("input", "target_index", "target_label", "probability", "method", "order",
                                                  "seed", "auc", "fractions", "probabilities")}
        for i in self.inputs:
            for c in i.curves:
                cols["input"].append(i.path)
                cols["target_index"].append(i.target.index)
                cols["target_label"].append(i.target.label)
                cols["probability"].append(i.base)
                cols["method"].append(c.method)
                cols["order"].append(c.order)
                cols["seed"].append(c.seed)
                cols["auc"].append(c.auc)
                cols["fractions"].append(list(c.fractions))
                cols["probabilities"].append(list(c.probabilities))
        return cols


def _photo_paths(path: str, limit: int | None) -> list[str]:
    p = Path(path).expanduser()
    if p.is_dir():
        from attnviz.inputs.folder import files_in

        photos = files_in(p, IMAGE_SUFFIXES, min(limit or MAX_INPUTS, MAX_INPUTS), "photos")
        return photos
    return [path]


def run(request: FaithfulnessRequest) -> FaithfulnessRun:
    """Do the work of ``attnviz faithfulness`` and return what was produced (nothing is printed).

    Image classifiers read photos (``path``: a photo or a folder); text classifiers and causal language models read
    texts (``text``, or ``path``: a corpus file, one example per line or a .jsonl/.csv/.parquet ``column``).

    Raises:
        UsageError (2): bad settings, a model without a classification or language-model head. ModelError (3).
        InputError (4): an input cannot be read, a folder without photos. OutputError (5). Nothing is written then.
    """
    from attnviz.analysis.explain import IMAGE_METHODS, parse_methods
    from attnviz.inputs import IMAGE, TEXT, modality_of
    from attnviz.models import load_config, resolve_model

    if not 1 <= request.steps <= 1000:
        raise UsageError(f"--steps must be between 1 and 1000, not {request.steps}")
    if isinstance(request.methods, str) and not any(p.strip() for p in request.methods.split(",")):
        raise UsageError("--methods is empty; name at least one method, or all")
    methods = parse_methods(request.methods) or IMAGE_METHODS
    if not 0 <= request.seeds <= 1000:
        raise UsageError(f"--seeds must be between 0 and 1000, not {request.seeds}")
    if request.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {request.batch_size}")
    if request.limit is not None and request.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {request.limit}")
    figure_formats, html = request.output.formats()
    if html:
        raise UsageError("attnviz faithfulness writes figures, faithfulness.json and faithfulness.parquet; --format html is not one of them")
    quiet_libraries()
    source = resolve_model(request.model.name)
    modality = modality_of(load_config(source, request.model.load_options()))
    if modality == IMAGE:
        if request.baseline not in IMAGE_BASELINES:
            raise UsageError(f"--baseline for photos must be one of {', '.join(IMAGE_BASELINES)}, not '{request.baseline}'")
        if request.text is not None:
            raise UsageError("--text is for text models; give a photo or a folder of photos for an image classifier")
        return _run_images(request, methods, figure_formats)
    if modality == TEXT:
        if request.baseline not in TEXT_BASELINES:
            raise UsageError(f"--baseline for texts must be one of {', '.join(TEXT_BASELINES)}, not '{request.baseline}'")
        return _run_texts(request, methods, figure_formats)
    article = "an" if modality.noun[:1] in "aeiou" else "a"
    raise UsageError(f"attnviz faithfulness covers image classifiers and text models; '{request.model.name}' is "
                     f"{article} {modality.noun}")


def _output(request: FaithfulnessRequest, source, methods, layer: int, formats):
    from attnviz.report import RunOutput, model_files

    output = RunOutput(
        request.output.out, command="faithfulness", force=request.output.force, protect=model_files(source.location),
        settings={"model": source.model_id, "path": str(request.path), "text": (request.text or "")[:200],
                  "methods": list(methods), "steps": request.steps, "baseline": request.baseline, "seeds": request.seeds,
                  "layer": layer, "target_class": request.target_class},
    )
    output.check([f"faithfulness.{f}" for f in formats] + ["faithfulness.json", "faithfulness.parquet"])
    return output


def _orders(maps, units: list[int], seeds: int, input_index: int = 0) -> list:
    """Positive and negative orders of every method over ``units`` (indices into each map's values), then ``seeds``
    random ones, drawn from a generator seeded by (``input_index``, seed): each input gets its own permutations."""
    import torch

    from attnviz.analysis.faithfulness import NEGATIVE, POSITIVE, RANDOM, ranking

    index = torch.tensor(units)
    orders = []
    for m in maps:
        values = m.values[-1] if m.values.dim() == 2 and m.positions else m.values.reshape(-1)
        order = ranking(values.reshape(-1)[index])  # positions within ``units``
        orders += [(m.method, POSITIVE, None, order), (m.method, NEGATIVE, None, order.flip(0))]
    for s in range(seeds):
        gen = torch.Generator().manual_seed(input_index * 1_000_003 + s)
        orders.append((RANDOM, RANDOM, s, torch.randperm(len(units), generator=gen)))
    return orders


def _finish(request, output, run_: "FaithfulnessRun", formats) -> "FaithfulnessRun":
    with output:
        files = _write(run_, output, formats, run_.style)
    notify_left_alone(output)
    return replace(run_, files=tuple(files))


def _run_images(request: FaithfulnessRequest, methods, figure_formats) -> FaithfulnessRun:
    import torch

    from attnviz.analysis.explain import explain_image
    from attnviz.analysis.faithfulness import apply_patch_mask, perturbation_curves
    from attnviz.analysis.patches import image_plan, rollout_map
    from attnviz.inputs.imagefile import load_image
    from attnviz.inputs.patches import attend_image, load_image_model, preprocess
    from attnviz.signals import class_target

    if request.path is None:
        raise UsageError("give a photo or a folder of photos")
    photos = _photo_paths(request.path, request.limit)
    loaded = [(p, load_image(p)) for p in photos]  # a bad file fails before any model is loaded
    style = request.style.style({"steps": request.steps, "baseline": "mean" if request.baseline == "auto" else request.baseline})
    im = load_image_model(request.model.name, request.model.load_options(), weights=False)
    if not im.info.classifier:
        raise UsageError(f"'{im.source.model_id}' has no classification head: attnviz faithfulness follows a class's "
                         "probability, so it needs an image classifier (e.g. a DeiT or ViT fine-tuned on ImageNet)")
    layer = _layer(request.layer, im.info.num_layers)
    output = _output(request, im.source, methods, layer, figure_formats)
    im = im.with_weights()
    note = mark_random_weights(output, im.model)
    if getattr(im.model, "attnviz_new_head", ()):
        raise UsageError(f"'{im.source.model_id}' has no trained classification head in its checkpoint: there is no "
                         "prediction to test explanations of")
    param = next(im.model.parameters())
    inputs: list[InputCurves] = []
    forward = 0
    signal = {"forward": 0, "backward": 0}
    for path, photo in loaded:
        pixel_values, box, grid, _ = preprocess(im, photo)
        pixel_values = pixel_values.to(device=param.device, dtype=param.dtype)
        rows, cols = grid
        if pixel_values.shape[-2] % rows or pixel_values.shape[-1] % cols:
            raise UsageError(f"'{im.source.model_id}': its {pixel_values.shape[-2]}x{pixel_values.shape[-1]} input does "
                             f"not split into the {rows}x{cols} patch grid evenly; attnviz cannot remove patches exactly")
        units = rows * cols
        with torch.inference_mode():
            logits = im.model(pixel_values=pixel_values).logits.float()
        forward += 1
        target = class_target(logits, request.target_class, getattr(im.model.config, "id2label", None))
        base = float(torch.softmax(logits[0], -1)[target.index])
        result = attend_image(photo, im, plan=image_plan(im, (layer,), rollout="rollout" in methods), verify=request.model.verify)
        rollout = rollout_map(result) if "rollout" in methods else None
        explanation = explain_image(im, result, methods, layer=layer, target_class=target.index, rollout=rollout)
        signal["forward"] += 1 + explanation.forward_passes
        signal["backward"] += explanation.backward_passes
        baseline = _baseline(im, photo, pixel_values, "mean" if request.baseline == "auto" else request.baseline, box, cols)

        def predict(masks, pixel_values=pixel_values, baseline=baseline, grid=grid, index=target.index):
            batch = apply_patch_mask(pixel_values, baseline, masks, grid)
            with torch.inference_mode():
                out = im.model(pixel_values=batch).logits.float()
            return torch.softmax(out, dim=-1)[:, index].tolist()

        orders = _orders(explanation.maps, list(range(units)), request.seeds, len(inputs))
        curves, n = perturbation_curves(orders, units, request.steps, predict, base, request.batch_size)
        forward += n
        inputs.append(InputCurves(str(path), target, base, tuple(curves), units))
    run_ = FaithfulnessRun(im.source.model_id, im.model_type, methods, tuple(inputs), request.steps,
                           "mean" if request.baseline == "auto" else request.baseline,
                           request.seeds, layer, "patch", forward, signal, note, style,
                           target_fixed=request.target_class is not None)
    return _finish(request, output, run_, figure_formats)


def _layer(layer: int | None, n_layers: int) -> int:
    layer = -1 if layer is None else layer
    if not -n_layers <= layer < n_layers:
        raise UsageError(f"--layer {layer} is out of range: this model has {n_layers} layers (0..{n_layers - 1})")
    return layer % n_layers


def _texts(request: FaithfulnessRequest) -> list[str]:
    from attnviz.inputs.corpus import iter_texts, open_corpus

    if request.text is not None:
        if request.path is not None:
            raise UsageError("give either a text (--text) or a corpus file, not both")
        if not request.text.strip():
            raise UsageError("--text is empty")
        return [request.text]
    if request.path is None:
        raise UsageError("give a corpus file (one text per line, or .jsonl/.csv/.parquet with --column) or --text")
    texts = list(iter_texts(open_corpus(request.path, request.column), min(request.limit or MAX_INPUTS, MAX_INPUTS)))
    if not texts:
        raise UsageError(f"'{request.path}' holds no text")
    return texts


def _baseline_token(tm, kind: str) -> tuple[int, str]:
    """The token id a removed token becomes, and its text: ``mask`` (the tokenizer's mask token), ``pad``, ``unk``.

    Raises:
        UsageError: the tokenizer has no such token (the message names the ones it has).
    """
    tok = tm.tokenizer
    have = {k: (getattr(tok, f"{k}_token_id", None), getattr(tok, f"{k}_token", None)) for k in ("mask", "pad", "unk")}
    if kind == "auto":
        kind = next((k for k in ("mask", "unk", "pad") if have[k][0] is not None), "mask")
    tid, text = have[kind]
    if tid is None:
        there = [k for k, (i, _) in have.items() if i is not None]
        raise UsageError(f"the tokenizer of '{tm.source.model_id}' has no {kind} token; use --baseline "
                         f"{' or '.join(there) if there else '(none: this tokenizer has no mask, pad or unk token)'}")
    return int(tid), str(text)


def _run_texts(request: FaithfulnessRequest, methods, figure_formats) -> FaithfulnessRun:
    import torch

    from attnviz.analysis.explain import default_text_row, explain_text, text_target
    from attnviz.analysis.faithfulness import perturbation_curves
    from attnviz.inputs.tokens import load_text_model, model_inputs, prepare_text

    texts = _texts(request)
    tm = load_text_model(request.model.name, request.model.load_options(), weights=False, command="faithfulness")
    if tm.encoder_decoder:
        raise UsageError(f"attnviz faithfulness covers text classifiers and causal language models; '{tm.source.model_id}' "
                         f"is an encoder-decoder ({tm.model_type}) model")
    if tm.head_kind not in ("classifier", "causal-lm"):
        raise UsageError(f"'{tm.source.model_id}' has no classification or causal language-model head in its config: "
                         "attnviz faithfulness follows the probability of a class or of the next token"
                         + (" (a masked LM predicts the tokens it is shown)" if tm.head_kind == "masked-lm" else ""))
    if request.target_class is not None and tm.head_kind != "classifier":
        raise UsageError(f"--target-class is for classifiers; '{tm.source.model_id}' is a causal language model")
    baseline_id, baseline_text = _baseline_token(tm, request.baseline)
    layer = _layer(request.layer, tm.num_layers)
    style = request.style.style({"steps": request.steps, "baseline": baseline_text})
    output = _output(request, tm.source, methods, layer, figure_formats)
    tm = tm.with_weights(head=True)
    note = mark_random_weights(output, tm.model)
    if getattr(tm.model, "attnviz_new_head", ()):
        raise UsageError(f"'{tm.source.model_id}' has no trained task head in its checkpoint: there is no prediction to "
                         "test explanations of")
    model = tm.model
    one_by_one = tm.head_kind == "classifier" and getattr(model.config, "pad_token_id", None) is None
    inputs_out: list[InputCurves] = []
    forward = 0
    signal = {"forward": 0, "backward": 0}
    for i, text in enumerate(texts):
        prepared = prepare_text(tm, text, None, request.max_length)
        inputs = model_inputs(tm, prepared)
        row = default_text_row(tm, prepared)
        with torch.inference_mode():
            logits = model(**inputs).logits.float()
        forward += 1
        target = text_target(tm, prepared, logits, row, request.target_class)
        # a classifier's logits are [1, C]; a language model's [1, N, V], read at the explained row
        base = float(torch.softmax(logits[0] if logits.dim() == 2 else logits[0, row], -1)[target.index])
        explanation = explain_text(tm, prepared, methods, rows=(row,), layer=layer,
                                   target_class=target.index if tm.head_kind == "classifier" else None)
        signal["forward"] += explanation.forward_passes
        signal["backward"] += explanation.backward_passes
        special = prepared.tokens.special
        units = [p for p in range(len(special)) if not special[p] and p != row]
        if not units:
            if len(texts) == 1:
                raise UsageError("the text has no token to remove besides the explained one and special tokens")
            notify(f"text {i + 1} is skipped: it has no token to remove besides the explained one and special tokens")
            continue
        unit_index = torch.tensor(units)

        def predict(masks, inputs=inputs, unit_index=unit_index, index=target.index, row=row):
            ids = inputs["input_ids"].repeat(len(masks), 1)
            for b, mask in enumerate(masks):
                ids[b, unit_index[mask]] = baseline_id
            batch = {k: (v.repeat(len(masks), 1) if k != "input_ids" else ids) for k, v in inputs.items()}
            with torch.inference_mode():
                if one_by_one:
                    out = torch.cat([model(**{k: v[b:b + 1] for k, v in batch.items()}).logits for b in range(len(masks))])
                else:
                    out = model(**batch).logits
            out = out.float()
            out = out if out.dim() == 2 else out[:, row]
            return torch.softmax(out, dim=-1)[:, index].tolist()

        orders = _orders(explanation.maps, units, request.seeds, i)
        if request.steps > len(units):
            notify(f"text {i + 1} has {len(units)} token{'s' if len(units) != 1 else ''} to remove, fewer than --steps "
                   f"{request.steps}: some steps remove nothing new")
        curves, n = perturbation_curves(orders, len(units), request.steps, predict, base, request.batch_size)
        forward += n
        name = text if len(text) <= 80 else text[:77] + "..."
        inputs_out.append(InputCurves(name, target, base, tuple(curves), len(units)))
    if not inputs_out:
        raise UsageError("no text has a token to remove besides the explained one and special tokens")
    run_ = FaithfulnessRun(tm.source.model_id, tm.model_type, methods, tuple(inputs_out), request.steps, baseline_text,
                           request.seeds, layer, "token", forward, signal, note, style,
                           target_fixed=request.target_class is not None)
    return _finish(request, output, run_, figure_formats)


def _baseline(im, photo, pixel_values, kind: str, box, cols: int):
    """The model input every removed patch takes its pixels from: ``[1, C, H, W]``."""
    if kind == "mean":
        return pixel_values.mean(dim=(2, 3), keepdim=True).expand_as(pixel_values).contiguous()
    from PIL import ImageFilter

    from attnviz.inputs.patches import preprocess

    radius = (box[2] - box[0]) / cols  # one patch width in photo pixels
    blurred = photo.filter(ImageFilter.GaussianBlur(radius=radius))
    return preprocess(im, blurred)[0].to(device=pixel_values.device, dtype=pixel_values.dtype)


def _write(run: FaithfulnessRun, output, formats, style) -> list[Path]:
    from attnviz.render.faithfulness import faithfulness_view
    from attnviz.report import write_json, write_parquet

    files = [output.figure(faithfulness_view(run, style=style), "faithfulness", fmt) for fmt in formats]
    staged = output.path("faithfulness.parquet")
    write_parquet(staged.parent, staged.name, run.table(), {"model": run.model_id, "baseline": run.baseline,
                                                            "steps": run.steps})
    files.append(output.out_dir / "faithfulness.parquet")
    files.append(output.out_dir / "faithfulness.json")
    staged = output.path("faithfulness.json")
    write_json(staged.parent, staged.name, replace(run, files=tuple(files)).to_json())
    return files
