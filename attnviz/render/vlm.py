"""Figures of a vision-language model's answer (``attnviz generate --image``): functions returning matplotlib
Figures, no I/O.

- :func:`answer_view`: the generated text, each token shaded by its share of attention on the image;
- :func:`token_image_view`: one generated token's attention over the photo, per layer (head mean), the mean over
  layers and the heads that look at the image most; one block of panels per view of the photo (a model with tiles
  and a global image shows both);
- :func:`image_share_view`: the share on the image per step and layer (:func:`attnviz.render.generate.layer_share_view`).
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from attnviz.analysis import vlm as A
from attnviz.analysis.vlm import VIEW_TITLES
from attnviz.render.common import Frame, add_colorbar, clamp, make_titles, safe_label
from attnviz.render.image import OVERLAY_ALPHA, SINK_COLOR  # the same overlay and sink outline as attnviz image
from attnviz.render.layout import DEFAULT_STYLE, IMAGE_CMAP, Style, attach_metadata, max_chars, shared_vmax

#: Colour map of the answer's shading and of the maps over the photo (that of ``attnviz image``).
VLM_CMAP = IMAGE_CMAP
#: The photo is drawn at most this many pixels on its long side.
MAX_PHOTO_PIXELS = 768


def _photo(vgen) -> np.ndarray:
    image = vgen.photo
    if max(image.size) > MAX_PHOTO_PIXELS:
        image = image.copy()
        image.thumbnail((MAX_PHOTO_PIXELS, MAX_PHOTO_PIXELS))
    return np.asarray(image.convert("RGB"))


def _model(style: Style, vgen) -> str:
    return style.model_label(vgen.generation.model_id)


def _finish(frame: Frame, style: Style, view: str, vgen, title: str, settings: dict) -> Figure:
    attach_metadata(frame.figure, title, _model(style, vgen), style, view, settings)
    return frame.figure


# ---------------------------------------------------------------------------
# the answer, shaded by its share on the image


def answer_view(vgen, shares: "A.Shares", style: Style | None = None) -> Figure:
    """The generated text, token by token (wrapped like text), each token's box shaded by its ``image_share`` (the
    mean over layers of the head-mean share of its row on the image tokens), on a 0..max scale with a colour bar,
    and its step number below it. Box gids ``"token-{i}"``.

    Returns:
        A Figure ``style.width(8)`` inches wide.
    """
    import matplotlib

    style = style or DEFAULT_STYLE
    g = vgen.generation
    width = style.width(8.0)
    fonts = style.fonts(width)
    font = fonts.text + 1 if not style.print_size else fonts.text
    share = shares.image_share
    vmax = max(float(share.max()) if share.size else 0.0, 1e-6)
    cmap = style.colormap(VLM_CMAP)
    norm = matplotlib.colors.Normalize(0.0, vmax)
    notes = ["per layer, the mean over heads of the sum of the token's attention probabilities on the image tokens, "
             f"averaged over layers; colour scale from 0 to the largest share, {vmax:.3f}; numbers: steps"]
    titles = make_titles("Answer", _model(style, vgen), f"{g.num_generated} generated tokens",
                         f"shade: share of each token's attention on the {vgen.num_image_tokens} image tokens", notes, width,
                         fonts=fonts)
    left, right, cb = 0.2, 0.2, 0.9
    line_w = width - left - right - cb
    char_w = font * 0.6 / 72
    box_h = font * 1.9 / 72
    num_h = fonts.small * 1.3 / 72
    line_h = box_h + num_h + 0.08
    # lay out the tokens
    placed, x, line = [], 0.0, 0
    for i, label in enumerate(g.generated):
        text = safe_label(label, 24) or "␣"
        w = max(len(text), len(str(i))) * char_w + 0.12
        if x > 0 and x + w > line_w:
            x, line = 0.0, line + 1
        placed.append((i, text, x, line, w))
        x += w + 0.05
    lines = line + 1 if placed else 1
    top = titles.height_in() + 0.1
    height, plot_h = style.height(top + 0.15, max(lines * line_h, 0.9))
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    ax = frame.axes(left, top, line_w, plot_h)
    ax.set_xlim(0, line_w)
    ax.set_ylim(plot_h, 0)
    ax.axis("off")
    for i, text, x0, ln, w in placed:
        y0 = ln * line_h
        colour = cmap(norm(share[i]))
        r, gg, b, _ = colour
        dark = 0.299 * r + 0.587 * gg + 0.114 * b < 0.5
        rect = Rectangle((x0, y0), w, box_h, facecolor=colour, edgecolor="#999999", linewidth=0.4)
        rect.set_gid(f"token-{i}")
        ax.add_patch(rect)
        ax.text(x0 + w / 2, y0 + box_h / 2, text, ha="center", va="center", fontsize=font,
                color="white" if dark else "black")
        ax.text(x0 + w / 2, y0 + box_h + 0.02, str(i), ha="center", va="top", fontsize=fonts.small, color="#777777")
    from matplotlib.cm import ScalarMappable

    add_colorbar(frame, ScalarMappable(norm=norm, cmap=cmap), width - cb + 0.2, top, plot_h, "image share",
                 width_in=0.12, fontsize=fonts.small)
    return _finish(frame, style, "answer", vgen, titles.title, {"steps": g.num_generated, "vmax": vmax})


# ---------------------------------------------------------------------------
# one generated token over the photo


def _panels(vgen, step: int, top_heads: int, layer: int | None = None, head: int | None = None
            ) -> list[tuple[str, np.ndarray]]:
    """``(title, weights [image tokens])`` per panel. Default: the mean over layers, each layer (head mean) and the
    ``top_heads`` heads with the largest image share; with ``layer``: that layer's head mean and each of its heads;
    with ``head`` too: that one head; with ``head`` alone: that head in every layer."""
    g = vgen.generation
    if layer is None and head is not None:  # that head in every layer
        head = head % g.num_heads
        panels = [(f"head {head}, mean over layers", A.image_weights(vgen, step, None, head))]
        return panels + [(f"L{l} H{head}", A.image_weights(vgen, step, l, head)) for l in range(g.num_layers)]
    if layer is not None:
        layer = layer % g.num_layers
        if head is not None:
            head = head % g.num_heads
            return [(f"layer {layer}, head {head}", A.image_weights(vgen, step, layer, head))]
        panels = [(f"layer {layer}, head mean", A.image_weights(vgen, step, layer))]
        return panels + [(f"L{layer} H{h}", A.image_weights(vgen, step, layer, h)) for h in range(g.num_heads)]
    per_layer = A.layer_image_weights(vgen, step)  # [L, n]
    panels = [("mean over layers", per_layer.mean(axis=0))]
    panels += [(f"layer {l}", per_layer[l]) for l in range(per_layer.shape[0])]
    for h in A.top_image_heads(vgen, step, top_heads):
        panels.append((f"L{h.layer} H{h.head} · {h.share:.0%} on image", A.image_weights(vgen, step, h.layer, h.head)))
    return panels


def token_image_view(vgen, step: int, top_heads: int = 4, layer: int | None = None, head: int | None = None,
                     style: Style | None = None) -> Figure:
    """Generated token ``step``'s attention on the image tokens, drawn over the photo: panels for the mean over
    layers, each layer (head mean) and the ``top_heads`` heads whose row puts the most on the image (with ``layer``:
    that layer's head mean and each of its heads; with ``head`` too, that head alone; with ``head`` alone, that head in
    every layer); one block of panels per view
    (:meth:`attnviz.inputs.vlm.ImageTokenLayout.views`: the photo, or the global image and the tiles).

    Colour: attention probability, one scale from 0 shared by every panel; image tokens that act as sinks in the
    mean map (:func:`attnviz.analysis.vlm.image_sinks`) are outlined and left out of the scale (their weight is in
    the subtitle), so they cannot swamp it. Parts of the photo no token covers (a centre crop) are faded under a white veil.
    Image gids ``"heatmap"``, sink outlines ``"sink"``.

    Raises:
        UsageError: ``step`` out of range.
    """
    style = style or DEFAULT_STYLE
    g = vgen.generation
    step = g.check_step(step)
    layout = vgen.layout
    views = layout.views()
    panels = _panels(vgen, step, top_heads, layer, head)
    mean = A.image_weights(vgen, step)  # sinks are found in the mean over layers and heads
    sinks = sorted({t for v in views for t in A.image_sinks(mean, layout, v)})
    keep = np.ones(vgen.num_image_tokens, dtype=bool)
    keep[sinks] = False
    vmax = shared_vmax([w[keep] for _, w in panels]) if keep.any() else 1.0
    W, H = layout.image_size
    aspect = W / H
    n = len(panels)
    width = style.width(min(16.0, 1.0 + 2.4 * min(n, 6)))
    fonts = style.fonts(width)
    cb_room = (0.75 if width < 5 else 1.0) if style.print_size else 0.9
    cols = int(clamp(math.floor((width - 0.3 - cb_room) / (0.72 if style.print_size else 2.0)), 1, n))
    pw = (width - 0.3 - cb_room - (cols - 1) * 0.08) / cols
    ph = pw / aspect
    if ph > pw * 1.5:
        ph = pw * 1.5
        pw = ph * aspect
    rows_per_view = math.ceil(n / cols)
    label_h = fonts.small * 1.35 / 72 + 0.04
    view_h = fonts.text * 1.5 / 72 if len(views) > 1 else 0.0
    unplaced = A.unplaced_weight(mean, layout)
    notes = [
        f"colour: attention probability of generated token {step} ('{safe_label(g.generated[step], 16)}') on each image "
        f"token, one scale from 0 shared by all panels (max {vmax:.3g})",
    ]
    if sinks:
        notes.append("outlined: image token" + ("s " if len(sinks) > 1 else " ") + ", ".join(str(t) for t in sinks)
                     + " act as attention sinks (mean over layers: " + ", ".join(f"{mean[t]:.3g}" for t in sinks)
                     + "), left out of the colour scale")
    # per view, the parts of the photo no token of it covers (outside a centre crop), faded in every panel
    outside = {v: ~np.isfinite(A.paint(layout, np.ones(vgen.num_image_tokens), v, max_side=256)) for v in views}
    in_view = {v: set(A.view_tokens(layout, v).tolist()) for v in views}
    if any(o.any() for o in outside.values()):
        notes.append("faded: parts of the photo no image token covers (cropped away, or beyond the last whole patch of a tile)")
    if unplaced > 0:
        notes.append(f"{unplaced:.3g} of the mean row falls on row-end image_newline tokens, which cover no pixels")
    share = float(mean.sum())
    titles = make_titles("Over the photo", _model(style, vgen), f"generated token {step} '{safe_label(g.generated[step], 16)}'",
                         f"{share:.1%} of its attention (mean over layers and heads) is on the image", notes, width,
                         fonts=fonts)
    top = titles.height_in() + 0.05
    block_h = view_h + rows_per_view * (label_h + ph + 0.08)
    height, plot_h = style.height(top + 0.1, len(views) * block_h)
    if plot_h < len(views) * block_h:
        f = plot_h / (len(views) * block_h)
        pw, ph = pw * f, ph * f
        block_h = view_h + rows_per_view * (label_h + ph + 0.08)
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    photo = _photo(vgen)
    cmap = style.colormap(VLM_CMAP)
    boxes = layout.token_boxes()
    img = None
    for v_i, view in enumerate(views):
        y_view = top + v_i * block_h
        if view_h:
            t = frame.figure.text(0.3 / width, 1 - (y_view + 0.02) / height, VIEW_TITLES.get(view, view), ha="left",
                                  va="top", fontsize=fonts.text, fontweight="bold")
            t.set_gid(f"view-{view}")
        for i, (title, weights) in enumerate(panels):
            r, c = divmod(i, cols)
            x = 0.3 + c * (pw + 0.08)
            y = y_view + view_h + r * (label_h + ph + 0.08) + label_h
            ax = frame.axes(x, y, pw, ph)
            ax.imshow(photo, extent=(0, W, H, 0), interpolation="antialiased", zorder=0)
            shown = np.where(keep, weights, np.nan)
            canvas = A.paint(layout, shown, view, max_side=256)
            if outside[view].any():
                dim = ax.imshow(np.where(outside[view], 0.0, np.nan), extent=(0, W, H, 0), cmap="Greys", vmin=0, vmax=1,
                                alpha=0.6, interpolation="nearest", zorder=1)  # white veil, as attnviz image dims
                dim.set_gid("unseen")
            img = ax.imshow(np.ma.masked_invalid(canvas), extent=(0, W, H, 0), cmap=cmap, vmin=0.0, vmax=vmax,
                            alpha=OVERLAY_ALPHA, interpolation="nearest", zorder=2)
            img.set_gid("heatmap")
            for t in sinks:
                if t in in_view[view]:
                    x0, y0, x1, y1 = boxes[t]
                    rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=SINK_COLOR, linewidth=1.0, zorder=5)
                    rect.set_gid("sink")
                    ax.add_patch(rect)
            ax.set_xlim(0, W)
            ax.set_ylim(H, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(_short(title, max_chars(pw * 72, fonts.small)), fontsize=fonts.small, loc="left", pad=2)
    if img is not None:
        from matplotlib.cm import ScalarMappable

        compact = style.print_size and width < 5
        add_colorbar(frame, ScalarMappable(norm=img.norm, cmap=img.cmap), width - cb_room + (0.08 if compact else 0.15),
                     top + view_h + label_h, min(1.8, len(views) * block_h - view_h - label_h - 0.08),
                     "probability" if compact else "attention probability",
                     width_in=0.1 if compact else 0.12, fontsize=fonts.small)
    return _finish(frame, style, "token over photo", vgen, titles.title,
                   {"step": step, "vmax": vmax, "sinks": sinks, "panels": [t for t, _ in panels]})


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


def image_share_view(vgen, shares: "A.Shares", style: Style | None = None) -> Figure:
    """The share of each generated token's attention on the image tokens, per layer (head mean) and step: a line of
    the mean over layers with the lowest-to-highest layer band, and the layers x steps heatmap (gid
    ``"image-share"``) on 0..1."""
    from attnviz.render.generate import layer_share_view

    notes = [f"share of each step's attention on the {vgen.num_image_tokens} image tokens",
             "top: mean over layers and heads, band: lowest to highest layer; bottom: mean over each layer's heads"]
    return layer_share_view(vgen.generation, shares.group("image").T, "Image share per step", "share on the image",
                            notes, gid="image-share", view="image share", style=style)

