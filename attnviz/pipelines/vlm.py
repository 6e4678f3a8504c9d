"""``attnviz generate --image``: a vision-language model answers a prompt about a photo, and every generated token's
attention is kept (exact, float32), split into image / prompt / answer / first token and mapped onto the photo.

::

    from attnviz.pipelines.common import ModelRequest
    from attnviz.pipelines.generate import GenerateRequest
    from attnviz.pipelines.vlm import run

    run_ = run(GenerateRequest("What is on the table?", image="photo.jpg", chat=True,
                               model=ModelRequest("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")))
    run_.vlm.layout            # each image token's pixel box in the photo
    run_.shares.image_share    # [steps]: share of each generated token's attention on the image
    run_.to_json()             # what `attnviz generate ... --image ... --json` prints

Files: ``answer``, ``token-{i}`` (the ``--token``/``--step`` token, else the one that looks at the image most),
``image-share``, ``generation-map`` (image tokens collapsed into one key), ``sink-share``, ``report.html`` with
``--format html``; all written together at the end, or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from attnviz.errors import UsageError
from attnviz.pipelines.common import mark_random_weights, notify, notify_left_alone, notify_provenance, provenance
from attnviz.pipelines.generate import GenerateRun

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.analysis.vlm import Shares
    from attnviz.pipelines.generate import GenerateRequest
    from attnviz.vlm import VLMGeneration

@dataclass(frozen=True)
class VLMGenerateRun(GenerateRun):
    """:class:`GenerateRun` of a vision-language model: ``vlm`` (:class:`attnviz.vlm.VLMGeneration`), ``shares``
    (:class:`attnviz.analysis.vlm.Shares`), ``image_step``: the generated token drawn over the photo."""

    vlm: "VLMGeneration | None" = None
    shares: "Shares | None" = None
    image_step: int | None = None
    photo_path: str | None = None

    def to_json(self) -> dict:
        """``attnviz generate --json`` plus ``image`` (photo, layout, image-token positions), per step ``image_share``,
        ``shares`` and ``regions``, ``share_rule`` and ``token_view``."""
        import numpy as np

        from attnviz.analysis import vlm as A

        doc = super().to_json()
        v, s = self.vlm, self.shares
        layout = v.layout
        for i, entry in enumerate(doc["steps"]):
            weights = A.image_weights(v, i)
            entry["image_share"] = round(float(s.image_share[i]), 6)
            entry["shares"] = {k: round(val, 6) for k, val in s.step(i).items()}
            entry["regions"] = [r.to_dict() for r in A.top_regions(weights, layout)]
        doc["image"] = {
            "path": self.photo_path,
            "size": list(layout.image_size),
            "num_tokens": v.num_image_tokens,
            "token_positions": list(v.image_positions),
            "layout": layout.to_json(),
            "views": list(layout.views()),
        }
        doc["share_rule"] = A.SHARE_RULE
        doc["image_share_by_layer"] = np.round(s.group("image"), 6).tolist()  # [steps][layers]: image-share.png
        doc["regions_rule"] = (f"per step, the {A.TOP_REGIONS} image tokens with the largest attention probability (mean over "
                               "layers and heads), as pixel boxes (x0, y0, x1, y1) in the photo")
        g = v.generation
        mean = A.image_weights(v, self.image_step)
        doc["token_view"] = {
            "step": self.image_step, "token": g.generated[self.image_step],
            "top_heads": [h.to_dict() for h in A.top_image_heads(v, self.image_step)],
            "sinks": [t for view in layout.views() for t in A.image_sinks(mean, layout, view)],
            "unplaced": round(A.unplaced_weight(mean, layout), 6),
            "layer": self.layer, "head": self.head,
        }
        return doc


def run(request: "GenerateRequest", progress: Callable[[int, int], None] | None = None) -> VLMGenerateRun:
    """Do the work of ``attnviz generate --image``: ``request.image`` (a path) and ``request.prompt`` through the
    vision-language model ``request.model`` (nothing is printed).

    Raises:
        UsageError (2), ModelError (3), InputError (4), OutputError (5): one line each; nothing is written then.
    """
    from attnviz.analysis import vlm as A
    from attnviz.analysis.generation import candidates, strongest_links
    from attnviz.generate import find_step
    from attnviz.inputs.imagefile import load_image
    from attnviz.models import load_config, resolve_model
    from attnviz.pipelines.common import quiet_libraries
    from attnviz.pipelines.generate import _save, check_request
    from attnviz.report import RunOutput, check_tensor_path, model_files
    from attnviz.vlm import attend_vlm_generation, check_vlm, load_vlm

    q, out = request, request.output
    if q.method:
        raise UsageError("--method does not cover --image yet (vision-language models): leave it out")
    check_request(q)
    style = q.style.style()
    formats, html = out.formats()
    tensor_path = check_tensor_path(out.save_attn) if out.save_attn else None
    photo = load_image(q.image)
    quiet_libraries()
    options = q.model.load_options()
    source = resolve_model(q.model.name)
    config = load_config(source, options)
    check_vlm(config, q.model.name)
    _check_layer_head(config.get_text_config(), q.layer, q.head)
    output = RunOutput(
        out.out, command="generate", force=out.force, protect=model_files(source.location),
        settings={"model": q.model.name, "prompt": q.prompt[:200], "image": str(q.image), "max_new_tokens": q.max_new_tokens,
                  "sample": q.sample, "temperature": q.temperature, "top_p": q.top_p, "seed": q.seed, "format": out.format,
                  "size": q.style.size, "dpi": q.style.dpi, "label": q.style.label, "cmap": q.style.cmap,
                  "scale": q.style.scale, "save_attn": str(tensor_path) if tensor_path else None},
    )
    names = ["answer", "image-share", "generation-map", "sink-share"]
    output.check([f"{n}.{f}" for f in formats for n in names] + (["report.html"] if html else []), tensor=tensor_path)
    vm = load_vlm(q.model.name, options)
    note = mark_random_weights(output, vm.model)
    notify_provenance(vm.model, vm.text.tokenizer)
    vgen = attend_vlm_generation(
        q.prompt, photo, vm, chat=q.chat, photo_name=Path(str(q.image)).name, progress=progress, verify=q.model.verify,
        max_new_tokens=q.max_new_tokens, sample=q.sample, temperature=q.temperature, top_p=q.top_p, seed=q.seed,
    )
    result = vgen.generation
    if result.notice:
        notify(result.notice)
    candidates(result, q.layer, q.head)
    links = strongest_links(result, q.layer, q.head, q.top)
    shares = A.shares(vgen)
    chosen = (find_step(result, q.token, q.token_index) if q.token is not None
              else (result.check_step(q.step) if q.step is not None else None))
    image_step = chosen if chosen is not None else int(shares.image_share.argmax())
    collapsed = A.collapse_image(result, vgen.image_positions)
    with output:
        files = [p for f in formats for p in _write_views(vgen, collapsed, shares, image_step, q, output, f, style)]
        if html:
            from attnviz.html.vlm import vlm_page

            files.append(output.page(vlm_page(vgen, shares, label=style.model_label(result.model_id)), "report"))
        if tensor_path is not None:
            _save(result, output.tensor_target(tensor_path), extra={
                "image_token_positions": list(vgen.image_positions), "image_layout": vgen.layout.to_json(),
                "image": str(q.image)})
    notify_left_alone(output)
    return VLMGenerateRun(result, tuple(links), None, q.layer, q.head, q.fusion, chosen, None, tuple(files), output.tensor,
                          note, style, provenance(vm.model, vm.text.tokenizer), None, None,
                          vlm=vgen, shares=shares, image_step=image_step, photo_path=str(q.image))


def _write_views(vgen, collapsed, shares, image_step: int, q, output, fmt: str, style) -> list[Path]:
    from attnviz.render.generate import generation_map, sink_view
    from attnviz.render.vlm import answer_view, image_share_view, token_image_view

    return [
        output.figure(answer_view(vgen, shares, style=style), "answer", fmt),
        output.figure(token_image_view(vgen, image_step, layer=q.layer, head=q.head, style=style), f"token-{image_step}", fmt),
        output.figure(image_share_view(vgen, shares, style=style), "image-share", fmt),
        output.figure(generation_map(collapsed, q.layer, q.head, q.fusion, style=style), "generation-map", fmt),
        output.figure(sink_view(vgen.generation, style=style), "sink-share", fmt),  # key 0 itself, image or not
    ]


def _check_layer_head(text_config, layer: int | None, head: int | None) -> None:
    """``--layer``/``--head`` against the language model's config (its layers and heads), before the weights load.

    Raises:
        UsageError: out of range.
    """
    layers, heads = int(text_config.num_hidden_layers), int(text_config.num_attention_heads)
    if layer is not None and not -layers <= layer < layers:
        raise UsageError(f"--layer {layer} is out of range: the language model has {layers} layers (0..{layers - 1})")
    if head is not None and not -heads <= head < heads:
        raise UsageError(f"--head {head} is out of range: the language model has {heads} heads per layer (0..{heads - 1})")
