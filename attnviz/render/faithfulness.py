"""The perturbation curves of ``attnviz faithfulness``: one panel for each order, one line per method, the random
orders as a grey band."""

from __future__ import annotations

from matplotlib.figure import Figure

from attnviz.render.common import Frame, Titles, wrap
from attnviz.render.layout import DEFAULT_STYLE, Style, attach_metadata

#: One colour per method, the same in every panel (colour-blind safe, Okabe & Ito).
METHOD_COLORS = {
    "attention": "#E69F00", "rollout": "#56B4E9", "grad-attention": "#009E73", "relevance": "#D55E00",
    "value-norm": "#CC79A7",
}


def faithfulness_view(run, *, width_in: float = 10.0, style: Style = DEFAULT_STYLE) -> Figure:
    """Mean target probability against the fraction of input units removed, per method and order.

    ``run``: an :class:`attnviz.pipelines.faithfulness.FaithfulnessRun`. Left: most relevant first (a faithful
    method falls fast: lower area); right: least relevant first (higher area). The random orders' mean is a grey
    line with a band from the lowest to the highest seed's mean curve. The legend gives each area (AUC).
    """
    width = style.width(width_in)
    fonts = style.fonts(width)
    n = len(run.inputs)
    random = run.random_summary() if run.seeds else None
    title = f"faithfulness of attention explanations · {style.model_label(run.model_id)}"
    unit, noun = run.plural, "photo" if run.unit == "patch" else "text"
    units = sorted({i.units for i in run.inputs})
    count = f"{units[0]}" if len(units) == 1 else f"{units[0]}-{units[-1]}"
    replaced = {"mean": "the mean colour", "blur": "the blurred photo"}.get(run.baseline, f"the token {run.baseline}")
    what = ("the class given" if run.target_fixed else f"each {noun}'s top class") if run.unit == "patch" or not \
        run.inputs or run.inputs[0].target.kind == "class" else "the top prediction for the next token"
    subtitle = (f"{n} {noun}{'s' if n != 1 else ''} · {count} {unit} removed in {run.steps} steps, replaced by "
                f"{replaced} · target: {what} (softmax probability)"
                + (f" · random: {run.seeds} orders, AUC {random['positive_auc']:.3f} ± {random['std']:.3f}" if random else "")
                + f" · one-layer methods read layer {run.layer}")
    margin = 0.4
    titles = Titles(wrap(title, width - margin, fonts.title, bold=True), wrap(subtitle, width - margin, fonts.sub),
                    fonts.title, fonts.sub)
    top = titles.height_in() + 0.35
    gap = 0.9
    pw = (width - 0.8 - gap) / 2
    ph = pw * 0.7
    legend_h = 0.5 + 0.2 * -(-(len(run.methods) + 1) // 3)
    if style.height_in:
        ph = max(0.8, style.height_in - top - 0.55 - legend_h)
    height = style.height_in or top + ph + 0.55 + legend_h
    frame = Frame(width, height, style.resolution)
    frame.titles(titles)
    scores = {s.name: s for s in run.scores}
    for i, (order, label) in enumerate((("positive", f"most relevant {unit} removed first (lower area = more faithful)"),
                                        ("negative", f"least relevant {unit} removed first (higher area = more faithful)"))):
        ax = frame.axes(0.65 + i * (pw + gap), top, pw, ph)
        if random:
            fr, mean = run.mean_curve("random", "random")
            import numpy as np

            seeds = [[c for inp in run.inputs for c in inp.curves if c.order == "random" and c.seed == s] for s in range(run.seeds)]
            per_seed = [np.mean([np.interp(fr, c.fractions, c.probabilities) for c in cs], axis=0) for cs in seeds]
            lo = [min(p[k] for p in per_seed) for k in range(len(fr))]
            hi = [max(p[k] for p in per_seed) for k in range(len(fr))]
            ax.fill_between(fr, lo, hi, color="#bbbbbb", alpha=0.5, linewidth=0)
            ax.plot(fr, mean, color="#777777", lw=1.4, ls=":", label=f"random  {random['positive_auc']:.3f}")
        for name in run.methods:
            fr, mean = run.mean_curve(name, order)
            auc = scores[name].positive_auc if order == "positive" else scores[name].negative_auc
            ax.plot(fr, mean, color=METHOD_COLORS.get(name, "#333333"), lw=1.8, marker="o", ms=2.5,
                    label=f"{name}  {auc:.3f}")
        ax.set_xlim(0, 1)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"fraction of {unit} removed", fontsize=fonts.text)
        if i == 0:
            ax.set_ylabel(f"target probability (mean over {noun}s)", fontsize=fonts.text)
        ax.set_title(wrap(label, pw, fonts.text), fontsize=fonts.text, loc="left")
        ax.tick_params(labelsize=fonts.small)
        ax.grid(alpha=0.3, lw=0.5)
        leg = ax.legend(title="method and its area (AUC)", fontsize=fonts.small, title_fontsize=fonts.small, frameon=False,
                        loc="upper left", bbox_to_anchor=(-0.02, -0.55 / ph), ncol=3, alignment="left",
                        columnspacing=1.0, handlelength=1.6)
        leg.set_gid(f"legend-{order}")
        ax.set_gid(f"curves-{order}")
    attach_metadata(frame.figure, titles.title, style.model_label(run.model_id), style, "faithfulness",
                    {"steps": run.steps, "baseline": run.baseline, "seeds": run.seeds})
    return frame.figure
