"""attnviz heads: every statistic equals a direct computation from transformers' eager output_attentions.

The reference below runs each example alone (no padding) through the eager model
and computes every statistic with plain loops; attnviz runs padded batches through
the capture engine and accumulates sums. Also: the corpus readers, probes against
the focus rule, the CLI outputs, and the Ray engine against the local one.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnviz.analysis.headstats import STATISTICS, is_punctuation, sample_positions
from attnviz.analysis.words import token_units, word_units
from attnviz.cli import app
from attnviz.inputs.corpus import iter_batches, iter_texts, open_corpus
from attnviz.errors import InputError
from tiny import CORPUS

pytestmark = pytest.mark.slow  # the fast tier is pytest -m 'not slow' (README, Tests)

TEXTS = CORPUS + ["Short one.", "Heads, tails; and more punctuation!"]
TOL = 1e-5
runner = CliRunner()


@pytest.fixture(scope="module")
def peaky(tiny_models, tmp_path_factory):
    """tiny_models(kind) with query/key weights scaled up, so that heads attend sharply and differ (a test that can fail)."""
    from transformers import AutoModel, AutoTokenizer

    cache = {}

    def get(kind):
        if kind not in cache:
            src = tiny_models(kind)
            model = AutoModel.from_pretrained(src)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if any(s in name for s in ("query", "key", "q_proj", "k_proj", "c_attn")):
                        p.mul_(15.0)
            cache[kind] = tmp_path_factory.mktemp(f"peaky-{kind}")
            model.save_pretrained(cache[kind])
            AutoTokenizer.from_pretrained(src).save_pretrained(cache[kind])
        return cache[kind]

    return get


def _eager(path):
    from transformers import AutoModel, AutoTokenizer

    return AutoModel.from_pretrained(path, attn_implementation="eager").eval(), AutoTokenizer.from_pretrained(path)


def reference(path, texts, words: bool, causal: bool, R: int = 4):
    """Every statistic by plain loops over eager output_attentions of each example alone; and the head distances."""
    from scipy.spatial.distance import jensenshannon

    from attnviz.inputs.tokens import _token_info

    model, tok = _eager(path)
    sums, count, uniform = {}, 0, None
    js, js_rows = None, 0
    for text in texts:
        enc = tok(text, return_offsets_mapping=True)
        info = _token_info(text, enc, tok)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([enc["input_ids"]]), output_attentions=True)
        att = torch.stack([a[0] for a in out.attentions]).double().numpy()  # [L, H, N, N]
        units = word_units(info) if words else token_units(info)
        U = len(units)
        if words:  # FROM a word = mean of its pieces' rows, TO a word = sum
            w = np.zeros(att.shape[:2] + (U, U))
            for a, ga in enumerate(units.groups):
                for b, gb in enumerate(units.groups):
                    w[:, :, a, b] = att[:, :, list(ga)][:, :, :, list(gb)].sum(-1).mean(-1)
            att = w
        L, H = att.shape[:2]
        if not sums:
            sums = {k: np.zeros((L, H)) for k in ("first", "sep_eos", "punct", "entropy", "prev", "same", "next", "distance")}
            uniform, js = 0.0, np.zeros((L * H, L * H))
        for q in range(U):
            count += 1
            n_q = (q + 1) if causal else U
            uniform += math.log(n_q)
            for l in range(L):
                for h in range(H):
                    p = att[l, h, q]
                    sums["first"][l, h] += p[0]
                    sums["sep_eos"][l, h] += sum(p[k] for k in range(1, U) if units.special[k])
                    sums["punct"][l, h] += sum(p[k] for k in range(U) if not units.special[k] and is_punctuation(units.labels[k]))
                    sums["entropy"][l, h] += -sum(x * math.log(x) for x in p if x > 0)
                    top = int(np.argmax(p))
                    sums["prev"][l, h] += top == q - 1
                    sums["same"][l, h] += top == q
                    sums["next"][l, h] += top == q + 1
                    sums["distance"][l, h] += sum(p[k] * abs(q - k) for k in range(U))
        rows = att[:, :, sample_positions(U, R)].reshape(L * H, -1, U)
        for i in range(L * H):
            for j in range(L * H):
                js[i, j] += sum(jensenshannon(rows[i, r], rows[j, r]) for r in range(rows.shape[1])) if i != j else 0.0
        js_rows += rows.shape[1]
    stats = {k: v / count for k, v in sums.items()}
    stats["entropy_ratio"] = sums["entropy"] / uniform
    return stats, js / js_rows, count


def attnviz_stats(path, texts, words: bool, batch_size: int):
    from attnviz.pipelines.headstats_engine import BatchRunner, HeadsSettings, run_local
    from attnviz.inputs.tokens import load_text_model

    tm = load_text_model(str(path))
    r = BatchRunner(tm, HeadsSettings(words=words, batch_size=batch_size, cluster_every=1))
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    return r, run_local(r, batches)


@pytest.mark.parametrize("kind,words,causal", [("bert", False, False), ("bert", True, False), ("llama", False, True), ("gpt2", True, True)])
def test_statistics_equal_eager(peaky, kind, words, causal):
    path = peaky(kind)
    r, sums = attnviz_stats(path, TEXTS, words, batch_size=3)  # padded batches of 3 and 2
    assert r.causal is causal
    ref, ref_js, count = reference(path, TEXTS, words, causal)
    assert sums.queries == count and sums.examples == len(TEXTS)
    means = sums.means()
    assert set(means) == set(STATISTICS)
    for name in STATISTICS:
        np.testing.assert_allclose(means[name], ref[name], atol=TOL, rtol=0, err_msg=name)
    np.testing.assert_allclose(sums.head_distances(), ref_js, atol=TOL, rtol=0)
    # the statistics are not trivially equal across heads (the test can fail)
    assert np.ptp(means["entropy"]) > 0.05 and np.ptp(ref_js) > 0.05 and means["prev"].max() > 0.05


def test_padding_never_counts(tiny_models):
    path = tiny_models("bert")
    _, alone = attnviz_stats(path, TEXTS, False, batch_size=1)
    _, padded = attnviz_stats(path, TEXTS, False, batch_size=len(TEXTS))
    for name in STATISTICS:
        np.testing.assert_allclose(padded.means()[name], alone.means()[name], atol=1e-6, err_msg=name)
    assert padded.tokens == alone.tokens and padded.queries == alone.queries


def test_corpus_readers_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    texts = ["first, with a comma", "  ", "second \"quoted\"", "third"]
    (tmp_path / "c.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    table = pa.table({"id": list(range(4)), "body": texts})
    pcsv.write_csv(table, tmp_path / "c.csv")
    pq.write_table(table, tmp_path / "c.parquet")
    want = [t for t in texts if t.strip()]
    assert list(iter_texts(open_corpus(tmp_path / "c.txt"))) == want
    for name in ("c.jsonl", "c.csv", "c.parquet"):
        corpus = open_corpus(tmp_path / name, "body")
        assert list(iter_texts(corpus)) == want, name
        assert [len(b) for b in iter_batches(corpus, 2, limit=3)] == [2, 1]
    with pytest.raises(InputError, match="no column 'text'"):
        list(iter_texts(open_corpus(tmp_path / "c.jsonl")))
    with pytest.raises(InputError, match="no column 'text'"):
        open_corpus(tmp_path / "c.parquet")
    with pytest.raises(InputError, match="does not exist"):
        open_corpus(tmp_path / "missing.txt")


def test_probes_follow_the_focus_rule(peaky, tmp_path):
    """Each head's probe answer is its strongest earlier, non-special, non-adjacent token in eager attention."""
    from attnviz.pipelines.headstats_engine import Probe, run_probes
    from attnviz.inputs.tokens import _token_info, load_text_model

    path = peaky("bert")
    probes = [
        Probe("The animal didn't cross the street because it was too tired.", "it", "animal"),
        Probe("The dog chased the cat because it was angry.", "it", "dog"),
        Probe("The man lifted the box and the man smiled.", "man", "and", token_index=1),
    ]
    got = run_probes(load_text_model(str(path)), probes, words=False)
    model, tok = _eager(path)
    hits = np.zeros(got.accuracy.shape)
    for probe in probes:
        enc = tok(probe.text, return_offsets_mapping=True)
        info = _token_info(probe.text, enc, tok)
        with torch.no_grad():
            att = torch.stack(model(input_ids=torch.tensor([enc["input_ids"]]), output_attentions=True).attentions)[:, 0]
        q = [i for i, t in enumerate(info.tokens) if t == probe.token][probe.token_index or 0]
        ok = [k for k in range(len(info)) if not info.special[k] and k < q - 1]
        for l in range(hits.shape[0]):
            for h in range(hits.shape[1]):
                k = ok[int(torch.argmax(att[l, h, q, ok]))]
                hits[l, h] += info.tokens[k] == probe.target
    np.testing.assert_array_equal(got.accuracy, hits / len(probes))
    assert got.baselines == {"recent_word": pytest.approx(1 / 3), "first_word": 0.0}  # "street", "cat", "and"; "the"


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_outputs(tiny_models, tmp_path):
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in TEXTS), encoding="utf-8")
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"text": TEXTS[0], "token": "it", "target": "animal"}) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    res = _cli("heads", corpus, "--model", tiny_models("bert"), "--column", "sentence", "--batch-size", 2, "--limit", 4,
               "--probes", probes, "--cluster-every", 2, "--out", out, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc == json.loads((out / "heads.json").read_text())
    assert doc["corpus"]["examples"] == 4 and doc["num_layers"] == 3 and doc["num_heads"] == 4
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models("bert"))
    assert doc["corpus"]["tokens"] == sum(len(tok(t)["input_ids"]) for t in TEXTS[:4])
    assert set(doc["statistics"]) == set(STATISTICS) and set(doc["definitions"]) >= set(STATISTICS)
    assert np.array(doc["statistics"]["first"]).shape == (3, 4)
    assert doc["probes"]["count"] == 1 and len(doc["head_map"]["mds"]) == 12
    import zlib

    sampled = [t for t in TEXTS[:4] if zlib.crc32(t.encode()) % 2 == 0]  # --cluster-every 2: 4 rows of each sampled example
    assert doc["corpus"]["head_distance_queries"] == sum(min(4, len(tok(t)["input_ids"])) for t in sampled)
    table = pq.read_table(out / "heads.parquet").to_pydict()
    assert table["layer"] == [i // 4 for i in range(12)]
    np.testing.assert_allclose(table["entropy"], np.ravel(doc["statistics"]["entropy"]))
    for name in [*STATISTICS, "probe_accuracy"]:
        assert (out / f"heads-{name.replace('_', '-')}.png").stat().st_size > 5000
    assert (out / "head-map.png").exists()
    # bad input: one line, its exit code, no traceback
    bad = _cli("heads", corpus, "--model", tiny_models("bert"), "--out", out)
    assert bad.exit_code == 4 and "no column 'text'" in bad.output and "Traceback" not in bad.output
    bad = _cli("heads", corpus, "--model", tiny_models("bert"), "--workers", 3, "--out", out)
    assert bad.exit_code == 2 and "--engine ray" in bad.output


def test_ray_engine_equals_local(tiny_models, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'attnviz[ray]')")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS * 2) + "\n", encoding="utf-8")
    docs = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for engine in ("local", "ray"):
            extra = []  # the default pool must work on the 2-CPU cluster (it once waited for ever)
            res = _cli("heads", corpus, "--model", tiny_models("gpt2"), "--words", "--batch-size", 3, "--engine", engine,
                       *extra, "--out", tmp_path / engine, "--json")
            assert res.exit_code == 0, res.output
            docs[engine] = json.loads(res.stdout)
            if engine == "ray":
                assert "Ray pool: 2 workers x 0.5 CPUs each (the cluster has 2 CPUs" in res.stderr
    finally:
        ray.shutdown()
    local, remote = docs["local"], docs["ray"]
    assert local["corpus"] == remote["corpus"] and remote["settings"]["engine"] == "ray"
    for name in STATISTICS:
        np.testing.assert_allclose(remote["statistics"][name], local["statistics"][name], atol=1e-6, rtol=0, err_msg=name)
    np.testing.assert_allclose(remote["head_map"]["distances"], local["head_map"]["distances"], atol=1e-6, rtol=0)
