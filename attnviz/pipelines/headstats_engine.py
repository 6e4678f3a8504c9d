"""``attnviz heads``: which heads do what, across a whole corpus.

A pipeline over the same capture engine, word merging and focus link rule as
``attnviz text``: each padded batch of the corpus is run once through
:func:`attnviz.capture.capture` with a batch plan whose ``on_layer`` callback folds
the layer into running sums (:mod:`attnviz.analysis.headstats`), so memory stays flat
in the corpus size and no ``[H, N, N]`` beyond the current layer exists. The same
per-batch code (:class:`BatchRunner`) runs in this process (``engine="local"``) or
in a Ray Data actor pool (``engine="ray"``, :func:`run_ray`); the partial sums add up.

Probes (``--probes``) reuse :func:`attnviz.analysis.focus.analyse_focus` on each probe
sentence: a head's answer is its link for the probe token, exactly as the focus
view draws it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from attnviz.analysis.headstats import DEFINITIONS, STATISTICS, BatchAccumulator, HeadSums, batch_layout, embed_heads
from attnviz.errors import InputError, ModelError, UsageError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class HeadsSettings:
    """How the corpus is read and counted: ``words`` merges pieces into words; ``batch_size`` examples
    per forward; ``max_length`` truncates (default: the model's limit); the head distances use
    ``cluster_queries`` query units of one example in ``cluster_every`` (see
    :mod:`attnviz.analysis.headstats`); ``limit`` examples at most; ``verify`` checks the capture against
    eager attention first for a model type outside :data:`attnviz.verify.PROVEN_TYPES`."""

    words: bool = False
    batch_size: int = 32
    max_length: int | None = None
    cluster_queries: int = 4
    cluster_every: int = 8
    limit: int | None = None
    verify: bool = True

    def check(self) -> None:
        """Raises UsageError for values out of range."""
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, not {self.limit}")
        if self.max_length is not None and self.max_length < 2:
            raise UsageError(f"--max-length must be at least 2, not {self.max_length}")
        if self.cluster_queries < 1:
            raise UsageError(f"--cluster-queries must be at least 1, not {self.cluster_queries}")
        if self.cluster_every < 1:
            raise UsageError(f"--cluster-every must be at least 1, not {self.cluster_every}")


class BatchRunner:
    """The per-batch code of both engines: tokenize, pad on the right, capture, accumulate.

    ``run(texts)`` returns the batch's :class:`HeadSums`. The model is loaded once
    by the caller (one per process / Ray actor).

    Raises:
        ModelError: an encoder-decoder model (the statistics are for single-stack models).
        UsageError: ``max_length`` above the model's limit.
    """

    def __init__(self, tm, settings: HeadsSettings):
        import torch

        from attnviz.capture import FULL
        from attnviz.verify import verified_capture

        if tm.encoder_decoder:
            raise ModelError(f"'{tm.source.model_id}' is an encoder-decoder model; 'attnviz heads' analyses single-stack "
                             "models (encoders such as BERT, decoders such as GPT-2 and Llama)")
        settings.check()
        self.tm = tm
        self.settings = settings
        self.limit = tm.max_positions
        if settings.max_length is not None:
            if settings.max_length > self.limit:
                raise UsageError(f"--max-length {settings.max_length} is more than the model's maximum of {self.limit} positions")
            self.limit = settings.max_length
        tok = tm.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.device = next(tm.model.parameters()).device
        self.num_layers, self.num_heads = tm.num_layers, tm.num_heads
        # causal or not, read off the maps: in a causal model the first query sees only itself
        ids = tok("a b c", add_special_tokens=True)["input_ids"][:3]
        # the probe also runs the run-time check (attnviz.verify): on a mismatch every batch is captured eager
        probe, self.verification = verified_capture(tm.model, tm.model_type, {"input_ids": torch.tensor([ids], device=self.device)},
                                                    FULL, None, settings.verify)
        self.capture_backend = "eager" if self.verification.use_eager else "auto"
        maps = next(iter(probe.attention.values()))
        self.causal = bool(maps.full.shape[-1] > 1 and (maps.full[:, :, 0, 1:] == 0).all())
        self.num_layers = maps.num_layers
        self.backend = probe.backend

    def encode(self, texts: Sequence[str]):
        """``(inputs, infos, truncated)``: right-padded ``input_ids``/``attention_mask`` ``[B, N]``, each example's TokenInfo."""
        encoded, truncated = self._tokenize(texts)
        inputs, infos = self._pad(encoded)
        return inputs, infos, truncated

    def _tokenize(self, texts: Sequence[str]):
        """``([(TokenInfo, ids), ...], truncated)`` for the non-empty examples, cut to :attr:`limit` tokens."""
        from attnviz.inputs.tokens import _token_info

        tok = self.tm.tokenizer
        encoded, truncated = [], 0
        for text in texts:
            enc = tok(text, return_offsets_mapping=True, verbose=False)
            if len(enc["input_ids"]) > self.limit:
                enc = tok(text, truncation=True, max_length=self.limit, return_offsets_mapping=True)
                truncated += 1
            if enc["input_ids"]:
                encoded.append((_token_info(text, enc, tok), enc["input_ids"]))
        return encoded, truncated

    def _pad(self, encoded):
        import torch

        infos = [info for info, _ in encoded]
        n = max((len(x) for _, x in encoded), default=0)
        input_ids = torch.full((len(encoded), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), n), dtype=torch.long)
        for i, (_, x) in enumerate(encoded):
            input_ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        return inputs, infos

    def run(self, texts: Sequence[str]) -> HeadSums:
        """Sums of every statistic over the non-padding units of ``texts``.

        One forward per group of examples whose padded attention maps hold at most
        :data:`MAX_CELLS` query-key pairs per head (a single longer example is its own group), so a batch
        with one example at the model's limit costs about what a batch of normal ones does. The sums
        are per example, so the grouping does not change them.
        """
        encoded, truncated = self._tokenize(texts)
        total = HeadSums(self.num_layers, self.num_heads)
        for group in _groups(encoded, MAX_CELLS):
            total.add(self._run(group))
        total.truncated += truncated
        return total

    def _run(self, encoded) -> HeadSums:
        from attnviz.capture import CapturePlan, capture

        inputs, infos = self._pad(encoded)
        layout = batch_layout(infos, inputs["input_ids"].shape[1], self.settings.words, self.causal,
                              self.settings.cluster_queries, self.settings.cluster_every)
        acc = BatchAccumulator(layout, self.num_layers, self.num_heads)
        plan = CapturePlan(batch=True, on_layer=acc.on_layer, need_outputs=False)
        capture(self.tm.model, inputs, plan, backend=self.capture_backend)
        return acc.finish()


#: Query-key pairs per head in one forward of ``attnviz heads`` (32 examples of 128 tokens; one 512-token example
#: takes half): batches with longer examples are split (:meth:`BatchRunner.run`).
MAX_CELLS = 32 * 128 * 128


def _groups(encoded: list, max_cells: int) -> list[list]:
    """``encoded`` (``(info, ids)`` pairs) in groups, in file order, whose ``len(group) * longest**2 <= max_cells``
    (a longer single example is a group of its own)."""
    groups: list[list] = []
    group: list = []
    longest = 0
    for item in encoded:
        n = len(item[1])
        if group and (len(group) + 1) * max(longest, n) ** 2 > max_cells:
            groups.append(group)
            group, longest = [], 0
        group.append(item)
        longest = max(longest, n)
    if group:
        groups.append(group)
    return groups


# ---------------------------------------------------------------------------
# engines


def run_local(runner: BatchRunner, batches: Iterable[Sequence[str]], progress: Callable[[HeadSums], None] | None = None) -> HeadSums:
    """Run every batch in this process and add the sums; ``progress(batch_sums)`` after each batch."""
    total = HeadSums(runner.num_layers, runner.num_heads)
    for texts in batches:
        part = runner.run(texts)
        total.add(part)
        if progress is not None:
            progress(part)
    return total


class RayWorker:
    """A Ray Data actor: loads the model once, then turns each batch of texts into one row of partial sums."""

    def __init__(self, model: str, options, settings: HeadsSettings, threads: int = 1):
        import torch

        from attnviz.pipelines.common import quiet_libraries
        from attnviz.inputs.tokens import load_text_model

        torch.set_num_threads(max(1, threads))
        quiet_libraries()
        self.runner = BatchRunner(load_text_model(model, options), settings)

    def __call__(self, batch: dict) -> dict:
        sums = self.runner.run([str(t) for t in batch["text"]])
        return {k: np.expand_dims(v, 0) for k, v in sums.to_arrays().items()}


#: CPUs of the Ray cluster left for reading the corpus when the pool is sized: Ray Data's read tasks ask for one
#: whole CPU each, so with less left they never start and the run waits for ever (seen with 2 x 0.75 on 2 CPUs).
READER_CPUS = 1.0


def pool_size(cpus: float, workers: int | None = None, cpus_per_worker: float | None = None) -> tuple[int, float]:
    """``(workers, CPUs per worker)`` for a Ray cluster of ``cpus`` CPUs; given values are kept.

    Unset: up to two workers (one per whole CPU), sharing what :data:`READER_CPUS` leaves, at most one
    CPU each, in quarters: 2 CPUs -> 2 x 0.5; 8 CPUs -> 2 x 1; 1 CPU -> 1 x 0.25 (which :func:`run_ray`
    refuses: nothing would be left for reading).
    """
    free = max(cpus - READER_CPUS, 0.0)
    if workers is None:
        workers = max(1, min(2, int(cpus)))
    if cpus_per_worker is None:
        cpus_per_worker = max(0.25, min(1.0, int(free / workers * 4) / 4))
    return workers, cpus_per_worker


def run_ray(
    model: str, options, corpus, settings: HeadsSettings, num_layers: int, num_heads: int, *, address: str | None = None,
    workers: int | None = None, gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None,
    progress: Callable[[HeadSums], None] | None = None, notify: Callable[[str], None] | None = None,
) -> HeadSums:
    """Read ``corpus`` as a Ray Dataset and run :class:`BatchRunner` in a pool of ``workers`` actors; sum the parts.

    Joins the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``...) or, without
    one, uses the running Ray instance or starts a local one. Each actor gets
    ``cpus_per_worker`` CPUs (and as many torch threads, at least one) and ``gpus_per_worker`` GPUs.
    Unset sizes are chosen from the cluster (:func:`pool_size`) and said through ``notify``.

    Raises:
        UsageError: Ray is not installed (``pip install 'attnviz[ray]'``) or bad pool sizes.
    """
    try:
        import ray
    except ImportError:
        raise UsageError("--engine ray needs Ray Data: pip install 'attnviz[ray]'") from None
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, not {workers}")
    if gpus_per_worker < 0 or (cpus_per_worker is not None and cpus_per_worker <= 0):
        raise UsageError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")
    from attnviz.inputs.corpus import ray_dataset

    import logging

    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        if address:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise UsageError(f"cannot join the Ray cluster at '{address}': {str(exc).splitlines()[0][:200]}") from None
    cpus = float(ray.cluster_resources().get("CPU", 0))
    chosen = workers is None or cpus_per_worker is None
    workers, cpus_per_worker = pool_size(cpus, workers, cpus_per_worker)
    if chosen and notify is not None:
        notify(f"Ray pool: {workers} workers x {cpus_per_worker:g} CPUs each (the cluster has {cpus:g} CPUs; "
               f"{READER_CPUS:g} left for reading the corpus)")
    if workers * cpus_per_worker > cpus - READER_CPUS + 1e-9:
        raise UsageError(
            f"{workers} workers x {cpus_per_worker:g} CPUs leave less than the one CPU Ray Data needs to read the corpus "
            f"on this Ray cluster of {cpus:g} CPUs; use fewer --workers, a smaller --cpus-per-worker (e.g. 0.5)"
            + (" or --engine local" if cpus < READER_CPUS + 0.25 else "")
        )
    ctx = ray.data.DataContext.get_current()
    for name in list(logging.root.manager.loggerDict):  # Ray Data configures its own loggers on import
        if name == "ray" or name.startswith("ray."):
            logging.getLogger(name).setLevel(logging.ERROR)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ds = ray_dataset(corpus, settings.limit)
    out = ds.map_batches(
        RayWorker,
        fn_constructor_kwargs={"model": model, "options": options, "settings": settings, "threads": int(max(1, cpus_per_worker))},
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
    )
    total = HeadSums(num_layers, num_heads)
    for row in out.iter_rows():
        part = HeadSums.from_arrays({k: np.asarray(v) for k, v in row.items()})
        total.add(part)
        if progress is not None:
            progress(part)
    return total


# ---------------------------------------------------------------------------
# probes: the focus view's link rule over many sentences


@dataclass(frozen=True)
class Probe:
    """One probe: in ``text``, the ``token`` (``token_index``-th occurrence) should link to the word ``target``."""

    text: str
    token: str
    target: str
    token_index: int | None = None


def read_probes(path: str | Path) -> list[Probe]:
    """Probes from a JSONL file of ``{"text", "token", "target", "token_index"?}`` objects (blank lines skipped).

    Raises:
        InputError: missing file, bad JSON, or a line without the fields (the message names the line).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"--probes '{p}' does not exist" if not p.exists() else f"--probes '{p}' is not a file")
    probes = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"--probes '{p}' line {n}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) and obj[k].strip() for k in ("text", "token", "target")):
                raise InputError(f"--probes '{p}' line {n}: needs non-empty string fields \"text\", \"token\" and \"target\"")
            index = obj.get("token_index")
            if index is not None and not isinstance(index, int):
                raise InputError(f"--probes '{p}' line {n}: \"token_index\" must be an integer")
            probes.append(Probe(obj["text"], obj["token"], obj["target"], index))
    if not probes:
        raise InputError(f"--probes '{p}' holds no probes")
    return probes


@dataclass(frozen=True)
class ProbeResult:
    """Per-head accuracy on the probes and the baselines.

    ``accuracy``: float64 ``[layers, heads]``, share of probes whose link is the
    target; ``baselines``: ``{"recent_word": share, "first_word": share}``, the
    nearest earlier eligible word (same rule as the links: not special, not the
    token, not adjacent) and the first non-special word; ``links``: per probe, the
    ``[layers, heads]`` link target labels.
    """

    probes: tuple[Probe, ...]
    accuracy: np.ndarray
    baselines: dict[str, float]
    links: tuple[tuple[tuple[str, ...], ...], ...] = field(default_factory=tuple)


def _same_word(a: str, b: str) -> bool:
    return a.strip().lower().removeprefix("##") == b.strip().lower().removeprefix("##")


def run_probes(tm, probes: Sequence[Probe], words: bool) -> ProbeResult:
    """Each probe's focus analysis (rows plan, direction back, neighbours excluded), scored against its target.

    Raises:
        InputError: a probe whose token is missing/ambiguous or whose target is not an earlier word of its text.
    """
    from attnviz.analysis.select import ViewSpec, find_focus, units_for
    from attnviz.capture import CapturePlan
    from attnviz.analysis.focus import analyse_focus
    from attnviz.inputs.tokens import attend_prepared, prepare_text

    spec = ViewSpec(words=words)
    hits = None
    base = {"recent_word": 0, "first_word": 0}
    links = []
    for n, probe in enumerate(probes, 1):
        prepared = prepare_text(tm, probe.text)
        try:
            positions = find_focus(prepared.tokens, probe.token, probe.token_index, spec)
            result = attend_prepared(tm, prepared, CapturePlan(rows=tuple(positions), need_outputs=False))
            focus = analyse_focus(result, probe.token, probe.token_index, spec, top=None)
        except UsageError as exc:
            raise InputError(f"probe {n} ('{probe.text[:60]}'): {exc}") from None
        units = units_for(prepared.tokens, spec)
        if not any(_same_word(lab, probe.target) for i, lab in enumerate(units.labels) if i < focus.unit):
            raise InputError(f"probe {n} ('{probe.text[:60]}'): target '{probe.target}' is not an earlier "
                             f"{'word' if words else 'token'} of the text")
        labels = [[focus.labels[int(t)] for t in row] for row in focus.targets]
        hit = np.array([[_same_word(lab, probe.target) for lab in row] for row in labels], dtype=np.float64)
        hits = hit if hits is None else hits + hit
        links.append(tuple(tuple(r) for r in labels))
        eligible = [i for i in range(focus.unit - 1) if not units.special[i]]
        if eligible:
            base["recent_word"] += _same_word(units.labels[eligible[-1]], probe.target)
        words_ = [i for i in range(len(units)) if not units.special[i]]
        if words_:
            base["first_word"] += _same_word(units.labels[words_[0]], probe.target)
    return ProbeResult(tuple(probes), hits / len(probes), {k: v / len(probes) for k, v in base.items()}, tuple(links))


# ---------------------------------------------------------------------------
# the result


@dataclass(frozen=True)
class HeadsResult:
    """What ``attnviz heads`` computed: per-head statistics ``stats[name]`` float64 ``[layers, heads]``
    (:data:`attnviz.analysis.headstats.STATISTICS`), the head distances ``[L*H, L*H]`` and their 2-D
    MDS embedding ``coords [L*H, 2]``, the probe scores, the corpus counts (``sums``) and settings."""

    model_id: str
    model_type: str
    backend: str
    num_layers: int
    num_heads: int
    causal: bool
    corpus: str
    engine: str
    settings: HeadsSettings
    sums: HeadSums
    stats: dict[str, np.ndarray]
    distances: np.ndarray
    coords: np.ndarray
    probes: ProbeResult | None = None
    verification: Any = None  # attnviz.verify.Verification of the run-time check

    @classmethod
    def build(cls, runner: BatchRunner, sums: HeadSums, corpus: str, engine: str, probes: ProbeResult | None = None) -> "HeadsResult":
        """Means, distances and the MDS embedding from the summed statistics."""
        if sums.examples == 0:
            raise InputError(f"corpus '{corpus}' holds no non-blank examples")
        distances = sums.head_distances()
        tm = runner.tm
        return cls(
            tm.source.model_id, tm.model_type, runner.backend, runner.num_layers, runner.num_heads, runner.causal, corpus,
            engine, runner.settings, sums, sums.means(), distances, embed_heads(distances), probes, runner.verification,
        )

    def distinctive(self, name: str, top: int = 3) -> list[tuple[int, int, float]]:
        """The ``top`` heads ``(layer, head, value)`` with the highest value of ``name`` (lowest for the entropies)."""
        values = self.stats[name] if name in self.stats else self.probes.accuracy
        flat = np.nan_to_num(values, nan=-np.inf if name not in ("entropy", "entropy_ratio") else np.inf).ravel()
        order = np.argsort(flat if name in ("entropy", "entropy_ratio") else -flat, kind="stable")[:top]
        return [(int(i) // self.num_heads, int(i) % self.num_heads, float(values.ravel()[i])) for i in order]

    def to_json(self, files: Sequence[Path] = (), style=None) -> dict:
        """The ``heads.json`` document: every statistic for every head, corpus size, definitions, settings, and the
        figures' ``style`` (:class:`attnviz.render.layout.Style`, default: screen) with the model's display ``label``."""
        from attnviz.render.layout import DEFAULT_STYLE

        style = style or DEFAULT_STYLE
        s = self.sums
        doc: dict[str, Any] = {
            "model": self.model_id,
            "label": style.model_label(self.model_id),
            "model_type": self.model_type,
            "backend": self.backend,
            "verified": bool(self.verification is not None and self.verification.verified),
            "verification": self.verification.to_json() if self.verification is not None else None,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "causal": self.causal,
            "corpus": {"path": self.corpus, "examples": s.examples, "tokens": s.tokens, "query_units": s.queries,
                       "truncated_examples": s.truncated, "head_distance_queries": s.js_rows},
            "settings": {"engine": self.engine, "words": self.settings.words, "batch_size": self.settings.batch_size,
                         "max_length": self.settings.max_length, "limit": self.settings.limit,
                         "cluster_queries": self.settings.cluster_queries, "cluster_every": self.settings.cluster_every,
                         "units": "words (pieces merged: to = sum, from = mean)" if self.settings.words else "tokens"},
            "style": style.describe(),
            "definitions": {k: DEFINITIONS[k] for k in (*STATISTICS, "head_distance")},
            "statistics": {name: _round(self.stats[name]) for name in STATISTICS},
            "head_map": {
                "heads": [f"L{i // self.num_heads}H{i % self.num_heads}" for i in range(self.num_layers * self.num_heads)],
                "distances": _round(self.distances),
                "mds": _round(self.coords),
                "method": "metric MDS (scikit-learn, random_state=0) on the head distances",
            },
        }
        if self.probes is not None:
            p = self.probes
            doc["definitions"]["probe_accuracy"] = DEFINITIONS["probe_accuracy"]
            doc["probes"] = {
                "count": len(p.probes),
                "accuracy": _round(p.accuracy),
                "baselines": p.baselines,
                "baseline_definitions": {
                    "recent_word": "the nearest earlier word that a link may reach (not special, not the token, not adjacent)",
                    "first_word": "the first non-special word of the text",
                },
                "best": [{"layer": l, "head": h, "accuracy": v} for l, h, v in self.distinctive("probe_accuracy", 10)],
            }
        doc["files"] = [str(f) for f in files]
        return doc

    def table(self) -> dict[str, list]:
        """One row per head (``layer``, ``head``, every statistic, ``mds_x``/``mds_y``, ``probe_accuracy``): the Parquet table."""
        L, H = self.num_layers, self.num_heads
        cols: dict[str, list] = {"layer": [i // H for i in range(L * H)], "head": [i % H for i in range(L * H)]}
        for name in STATISTICS:
            cols[name] = [float(v) for v in self.stats[name].ravel()]
        cols["mds_x"] = [float(v) for v in self.coords[:, 0]]
        cols["mds_y"] = [float(v) for v in self.coords[:, 1]]
        if self.probes is not None:
            cols["probe_accuracy"] = [float(v) for v in self.probes.accuracy.ravel()]
        return cols


def _round(a: np.ndarray) -> list:
    """A float array as nested lists (NaN -> None) for JSON, full float64 precision."""
    return [_round(x) for x in a] if a.ndim > 1 else [None if not np.isfinite(v) else float(v) for v in a]
