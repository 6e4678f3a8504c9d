"""``attnviz heads`` as a library call: which heads do what across a corpus (local or a Ray pool), with the
figures, ``heads.parquet`` and ``heads.json``.

::

    from attnviz.pipelines.heads import HeadsRequest, run
    from attnviz.pipelines.common import OutputRequest

    run_ = run(HeadsRequest("samples/corpus.txt", limit=200, output=OutputRequest(out="heads-out")))
    run_.result.stats["prev"]        # float64 [layers, heads]: share of queries attending most to the previous token
    run_.result.distinctive("prev")  # [(layer, head, value), ...] highest first
    run_.to_json()                   # what `attnviz heads ... --json` prints (= heads.json)

The corpus, the settings and the output paths are checked before the model loads; every example is
cut to :data:`attnviz.inputs.tokens.CHARS_PER_TOKEN` characters per token the model takes before it is
tokenized, so one huge line costs what a normal one does. All files are written together at the end, or none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from attnviz.errors import UsageError
from attnviz.models import DEFAULT_TEXT_MODEL
from attnviz.pipelines.common import (
    ModelRequest, OutputRequest, StyleRequest, mark_random_weights, notify, notify_left_alone, notify_provenance,
    provenance, quiet_libraries,
)

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.pipelines.headstats_engine import HeadsResult
    from attnviz.render.layout import Style

#: Below this many sampled examples the head map would rest on too few queries: every example is sampled.
SMALL_CORPUS = 8


@dataclass(frozen=True)
class HeadsRequest:
    """Everything ``attnviz heads`` takes (see ``attnviz heads --help`` and README "Heads across a corpus").

    ``corpus``: a text file (one example per line) or .jsonl/.csv/.parquet with the text ``column``;
    ``limit`` examples at most; ``batch_size`` per forward; ``max_length`` tokens per example; ``words``:
    count words instead of tokens; ``probes``: a JSONL of probes; ``cluster_queries``/``cluster_every``: the
    head map's sampling (``cluster_every`` unset: one example in 8, every example in a corpus under
    ``8 * SMALL_CORPUS`` examples); ``engine``: ``local`` or ``ray`` (``address``, ``workers``, ``cpus_per_worker``,
    ``gpus_per_worker``; unset pool sizes are chosen from the cluster); ``top``: heads per statistic in the table.
    """

    corpus: Path
    column: str = "text"
    limit: int | None = None
    batch_size: int = 32
    max_length: int | None = None
    words: bool = False
    probes: Path | None = None
    cluster_queries: int = 4
    cluster_every: int | None = None
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    top: int = 3
    model: ModelRequest = ModelRequest(DEFAULT_TEXT_MODEL)
    output: OutputRequest = OutputRequest()
    style: StyleRequest = StyleRequest()


@dataclass(frozen=True)
class HeadsRun:
    """What one ``attnviz heads`` run produced: the statistics (:class:`HeadsResult`), the files, the style;
    ``to_json()`` is ``--json`` (and ``heads.json``)."""

    result: "HeadsResult"
    files: tuple[Path, ...]
    style: "Style"
    top: int = 3
    provenance: dict | None = None

    def to_json(self) -> dict:
        return {**self.result.to_json(self.files, self.style), **(self.provenance or {})}


def _check(request: HeadsRequest):
    if request.engine not in ("local", "ray"):
        raise UsageError(f"--engine must be local or ray, not '{request.engine}'")
    if request.top < 1:
        raise UsageError("--top must be at least 1")
    ray_only = (request.address, request.workers, request.gpus_per_worker or None, request.cpus_per_worker)
    if request.engine == "local" and any(v is not None for v in ray_only):
        raise UsageError("--address, --workers, --gpus-per-worker and --cpus-per-worker are for --engine ray")
    if request.engine == "ray":
        try:
            import ray  # noqa: F401  (only to check it is installed)
        except ImportError:
            raise UsageError("--engine ray needs Ray Data: pip install 'attnviz[ray]'") from None


def run(request: HeadsRequest, progress: Callable[[Any], None] | None = None) -> HeadsRun:
    """Do the work of ``attnviz heads`` and return what was produced (nothing is printed).

    Args:
        request: the options (see :class:`HeadsRequest`).
        progress: called with each batch's partial sums (``.examples``, ``.tokens``) as it is counted.

    Raises:
        UsageError (2), ModelError (3), InputError (4: the corpus), OutputError (5): one line each; nothing is
        written then.
    """
    from attnviz.inputs.corpus import count_examples, iter_batches, open_corpus
    from attnviz.inputs.tokens import CHARS_PER_TOKEN, load_text_model
    from attnviz.pipelines.headstats_engine import (
        BatchRunner, HeadsResult, HeadsSettings, read_probes, run_local, run_probes, run_ray,
    )
    from attnviz.report import RunOutput, model_files

    quiet_libraries()
    style = request.style.style()
    formats, html = request.output.formats()
    _check(request)
    settings = HeadsSettings(words=request.words, batch_size=request.batch_size, max_length=request.max_length,
                             cluster_queries=request.cluster_queries, cluster_every=request.cluster_every or 8,
                             limit=request.limit, verify=request.model.verify)
    settings.check()
    source = open_corpus(request.corpus, request.column)
    probe_list = read_probes(request.probes) if request.probes is not None else None
    total = count_examples(source)
    total = min(total, request.limit) if total is not None and request.limit is not None else total
    if request.cluster_every is None and total is not None and total < SMALL_CORPUS * settings.cluster_every:
        small = (f"a small corpus ({total} examples): the head map samples every example, not one in "
                 f"{settings.cluster_every} (set --cluster-every to choose)")
        settings = replace(settings, cluster_every=1)
    else:
        small = None

    options = request.model.load_options()
    tm = load_text_model(request.model.name, options, weights=False)
    out = request.output
    output = RunOutput(
        out.out, command="heads", force=out.force, protect=model_files(tm.source.location),
        settings={"model": tm.source.model_id, "corpus": str(request.corpus), "column": request.column,
                  "limit": request.limit, "batch_size": request.batch_size, "max_length": request.max_length,
                  "words": request.words, "probes": str(request.probes) if request.probes else None,
                  "engine": request.engine, "format": out.format, "size": request.style.size, "dpi": request.style.dpi,
                  "label": request.style.label, "cmap": request.style.cmap, "scale": request.style.scale},
    )
    output.check([f"{stem}.{f}" for f in formats for stem in _figure_stems(bool(probe_list)).values()]
                 + ["heads.parquet", "heads.json"]
                 + (["report.html"] if html else []))
    tm = tm.with_weights()
    mark_random_weights(output, tm.model)
    notify_provenance(tm.model, tm.tokenizer)
    prov = provenance(tm.model, tm.tokenizer)
    runner = BatchRunner(tm, settings)
    if small:
        notify(small)
    if runner.verification.notice:
        notify(runner.verification.notice)
    if request.engine == "local":
        batches = iter_batches(source, settings.batch_size, settings.limit, max_chars=CHARS_PER_TOKEN * runner.limit)
        sums = run_local(runner, batches, progress)
    else:
        sums = run_ray(request.model.name, options, source, settings, runner.num_layers, runner.num_heads,
                       address=request.address, workers=request.workers, gpus_per_worker=request.gpus_per_worker,
                       cpus_per_worker=request.cpus_per_worker, progress=progress, notify=notify)
    if sums.truncated:
        notify(f"{sums.truncated} examples were longer than {runner.limit} tokens and were truncated")
    probe_result = run_probes(tm, probe_list, request.words) if probe_list else None
    result = HeadsResult.build(runner, sums, str(request.corpus), request.engine, probe_result)
    with output:
        files = _write(result, output, formats, style, html, prov)
    notify_left_alone(output)
    return HeadsRun(result, tuple(files), style, request.top, prov)


def _figure_stems(probes: bool) -> dict[str, str]:
    """The one list of figures ``attnviz heads`` writes: ``{statistic (or "head_map"): file stem}``."""
    from attnviz.analysis.headstats import STATISTICS

    names = list(STATISTICS) + (["probe_accuracy"] if probes else [])
    return {**{n: f"heads-{n.replace('_', '-')}" for n in names}, "head_map": "head-map"}


def _write(result, output, formats: list[str], style, html: bool = False, prov: dict | None = None) -> list[Path]:
    """Stage every figure, the HTML page, ``heads.parquet`` and ``heads.json``; return their final paths."""
    from attnviz.render.headstats import head_map_view, statistic_view
    from attnviz.report import write_json, write_parquet

    files: list[Path] = []
    stems = _figure_stems(result.probes is not None)
    for fmt in formats:
        for name, stem in stems.items():
            fig = head_map_view(result, style=style) if name == "head_map" else statistic_view(result, name, style=style)
            files.append(output.figure(fig, stem, fmt))
    if html:
        from attnviz.html.headstats import heads_page

        files.append(output.page(heads_page(result, style, label=style.model_label(result.model_id)), "report"))
    staged = output.path("heads.parquet")
    write_parquet(staged.parent, staged.name, result.table(), {"model": result.model_id, "corpus": result.corpus})
    files.append(output.out_dir / "heads.parquet")
    files.append(output.out_dir / "heads.json")
    staged = output.path("heads.json")
    write_json(staged.parent, staged.name, {**result.to_json(files, style), **(prov or {})})
    return files
