"""Issue "Trust, round 2" for ``attnviz heads``: corpora that are not files, CSVs without the column, one huge line,
NaN weights, tiny corpora, and a Ray pool sized for the machine."""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from attnviz.cli import app

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

runner = CliRunner()
QUERY = "encoder.layer.0.attention.self.query.weight"
TEXTS = ["The cat sat on the mat.", "A dog barked at the moon.", "Birds sing in the morning.", "Rain fell all night."]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line(result, code) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("attnviz: error:"), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from tiny import make_text_model

    return make_text_model(tmp_path_factory.mktemp("heads-trust"), "bert")


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return p


def test_a_fifo_is_refused_without_reading_it(bert, tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    done = []
    worker = threading.Thread(target=lambda: done.append(invoke("heads", fifo, "--model", bert, "--out", tmp_path / "o")))
    worker.start()
    worker.join(timeout=60)
    if worker.is_alive():  # unblock the reader so the test ends, then fail
        with open(fifo, "w") as fh:
            fh.write("x\n")
        worker.join()
        pytest.fail("attnviz heads blocked reading a FIFO")
    line = one_line(done[0], 4)
    assert "not a regular file" in line and "pipe.txt" in line
    assert not (tmp_path / "o").exists()


def test_dev_zero_is_refused_at_once(bert, tmp_path):
    start = time.perf_counter()
    line = one_line(invoke("heads", "/dev/zero", "--model", bert, "--out", tmp_path / "o"), 4)
    assert "not a regular file" in line
    assert time.perf_counter() - start < 30


def test_csv_without_the_column_names_the_columns(bert, tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("sentence,label\nThe cat sat.,1\nA dog ran.,0\n", encoding="utf-8")
    line = one_line(invoke("heads", p, "--model", bert, "--out", tmp_path / "o"), 4)
    assert "'text'" in line and "sentence" in line and "label" in line and "--column" in line
    assert not (tmp_path / "o").exists()
    res = invoke("heads", p, "--model", bert, "--column", "sentence", "--out", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["corpus"]["examples"] == 2


def test_long_lines_are_read_in_bounded_pieces():
    from attnviz.inputs.corpus import _bounded_lines

    class Counting(io.StringIO):
        biggest = 0

        def readline(self, size=-1):
            line = super().readline(size)
            Counting.biggest = max(Counting.biggest, len(line))
            return line

    text = "short one\n" + "x" * 1_000_000 + "\n" + "last\r\n" + "tail without end"
    lines = list(_bounded_lines(Counting(text), 100))
    assert lines == ["short one", "x" * 100, "last", "tail without end"]
    assert Counting.biggest <= 102  # never more than max_chars + 2 characters held at once
    assert list(_bounded_lines(io.StringIO("a\nb\n"), None)) == ["a", "b"]


def test_one_huge_line_counts_as_its_first_characters(bert, tmp_path):
    from attnviz.inputs.tokens import CHARS_PER_TOKEN

    big = tmp_path / "big.txt"
    big.write_text(TEXTS[0] + "\n" + "word " * 400_000 + "\n" + TEXTS[1] + "\n", encoding="utf-8")
    res = invoke("heads", big, "--model", bert, "--max-length", 16, "--out", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["corpus"]["examples"] == 3
    assert CHARS_PER_TOKEN * 16 < 2_000_000  # the huge line was cut before tokenizing
    assert "truncated" in res.stderr  # and then to --max-length tokens, said once


def test_nan_weights_are_refused(bert, tmp_path, corpus):
    dst = tmp_path / "nan"
    shutil.copytree(bert, dst)
    tensors = load_file(dst / "model.safetensors")
    tensors[QUERY][:] = float("nan")
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    line = one_line(invoke("heads", corpus, "--model", dst, "--out", tmp_path / "o", "--json"), 3)
    assert QUERY in line and "NaN" in line
    assert not (tmp_path / "o").exists()


def test_a_small_corpus_samples_every_example_with_a_notice(bert, tmp_path, corpus):
    res = invoke("heads", corpus, "--model", bert, "--out", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert "small corpus (4 examples)" in res.stderr
    assert doc["settings"]["cluster_every"] == 1
    assert doc["corpus"]["head_distance_queries"] > 0
    # an explicit --cluster-every is kept
    res = invoke("heads", corpus, "--model", bert, "--cluster-every", 2, "--out", tmp_path / "o2", "--json")
    assert res.exit_code == 0, res.output
    assert "small corpus" not in res.stderr and json.loads(res.stdout)["settings"]["cluster_every"] == 2


def test_header_says_what_the_statistics_count(bert, tmp_path, corpus):
    res = invoke("heads", corpus, "--model", bert, "--out", tmp_path / "o")
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0]
    assert "statistics over tokens" in header and "tokens · tokens" not in header
    res = invoke("heads", corpus, "--model", bert, "--words", "--out", tmp_path / "o2")
    assert "statistics over words" in res.stdout.splitlines()[0]


@pytest.mark.parametrize("cpus, expected", [(2, (2, 0.5)), (1, (1, 0.25)), (4, (2, 1.0)), (16, (2, 1.0))])
def test_the_ray_pool_fits_the_machine(cpus, expected):
    from attnviz.pipelines.headstats_engine import READER_CPUS, pool_size

    workers, per = pool_size(cpus, None, None)
    assert (workers, per) == expected
    assert workers * per + READER_CPUS <= cpus or cpus < 1.25  # one whole CPU stays free to read (1 CPU: refused)
    assert pool_size(8, 3, None) == (3, 1.0) and pool_size(8, None, 2.0) == (2, 2.0)


def test_long_examples_run_in_smaller_forwards_with_the_same_sums(bert, monkeypatch):
    import numpy as np

    import attnviz.pipelines.headstats_engine as engine
    from attnviz.inputs.tokens import load_text_model
    from attnviz.models import LoadOptions

    tm = load_text_model(str(bert), LoadOptions())
    texts = TEXTS[:2] + [" ".join(TEXTS * 6)] + TEXTS[2:]
    runner = engine.BatchRunner(tm, engine.HeadsSettings(cluster_every=1))
    encoded, _ = runner._tokenize(texts)
    lengths = [len(ids) for _, ids in encoded]
    groups = engine._groups(encoded, 2 * max(lengths[:2]) ** 2)
    assert [len(g) for g in groups] == [2, 1, 2]  # the long example alone, file order kept
    assert all(len(g) * max(len(ids) for _, ids in g) ** 2 <= 2 * max(lengths[:2]) ** 2 or len(g) == 1 for g in groups)
    one = runner.run(texts)
    monkeypatch.setattr(engine, "MAX_CELLS", 2 * max(lengths[:2]) ** 2)
    split = runner.run(texts)
    assert (split.examples, split.tokens, split.queries, split.js_rows) == (one.examples, one.tokens, one.queries, one.js_rows)
    for name, value in one.sums.items():
        np.testing.assert_allclose(split.sums[name], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split.js, one.js, rtol=1e-5, atol=1e-6)
