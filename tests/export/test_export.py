"""The export stage on the tiny random model: ONNX variants, the parity gate, the report, and the torch-free embedder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from arxiv_embeddings.backends import Embedder, load_embedder, onnx_embedder
from arxiv_embeddings.backends.loading import cpu_supports_bf16, resolve_model
from arxiv_embeddings.backends.onnx_embedder import (
    OPENVINO_VARIANTS,
    VARIANT_FILES,
    ExportNotFoundError,
    OnnxEmbedder,
    exported_variants,
    fastest_onnxruntime_variant,
    load_onnx_embedder,
    report_name,
    serving_default,
)
from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.export import stage as export_stage
from arxiv_embeddings.export.build import activation_matmuls, build_onnx
from arxiv_embeddings.export.measure import format_table, parity, subject_p10
from arxiv_embeddings.export.plan import (
    REPORT_KEYS,
    VARIANT_KEYS,
    ParityError,
    cuda_onnxruntime,
    detect_quantization_arch,
    model_target,
    planned_variants,
)
from arxiv_embeddings.io import tree_sha256
from arxiv_embeddings.layout import ModelNotFoundError
from arxiv_embeddings.papers import paper_text
from arxiv_embeddings.runner import execute

LEVELS = ["O1", "O3"]
LENGTHS = [32, 64]
#: The openvino-* variants the default export.openvino=[fp32, bf16, int8] measures here (bf16 only with native bf16).
OPENVINO = ["openvino-fp32", *(["openvino-bf16"] if cpu_supports_bf16() else []), "openvino-int8"]


def export_overrides(processed_root: Path, *extra: str) -> list[str]:
    """Read the shared processed splits; keep the timing tiny (figures are not asserted, only their presence)."""
    return [
        f"paths.processed_dir={processed_root / 'data' / 'processed'}",
        "run_name=tiny",
        f"export.optimization_levels=[{','.join(LEVELS)}]",
        "export.throughput.texts=8",
        "export.throughput.batch_size=8",
        f"export.throughput.seq_lengths=[{','.join(map(str, LENGTHS))}]",
        "export.throughput.repeats=1",
        *extra,
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("export_root")
    shutil.copytree(tiny_model_dir, root / "models" / "tiny" / "final")
    return root


@pytest.fixture(scope="module")
def model_dir(project: Path) -> Path:
    return project / "models" / "tiny" / "final"


@pytest.fixture(scope="module")
def exported(project: Path, processed_root: Path, make_cfg) -> dict:
    """The export stage run once through the stage runner (so its stamp is written too)."""
    cfg = make_cfg("export", project, export_overrides(processed_root))
    assert cfg.export.model == "tiny"  # by default, the model this run trained
    result = execute(export_stage.SPEC, cfg)
    assert result is not None
    return result


@pytest.fixture(scope="module")
def texts(processed_root: Path) -> list[str]:
    table = pq.read_table(processed_root / "data" / "processed" / "test.parquet").slice(0, 12)
    return paper_text(table, "title_abstract")


def test_every_variant_is_written_where_sentence_transformers_loads_it_and_passes_parity(
    exported: dict, model_dir: Path, texts: list[str]
) -> None:
    arch = detect_quantization_arch()
    expected = ["fp32", *LEVELS, f"int8-{arch}", *OPENVINO]
    assert exported_variants(model_dir) == expected
    report = exported["report"]
    for variant in expected:
        entry = report["variants"][report_name(variant)]
        assert (entry["backend"], entry["variant"]) == ("onnx", variant)
        assert entry["file"] == f"onnx/{VARIANT_FILES[variant]}" and (model_dir / entry["file"]).stat().st_size > 10_000
        assert entry["parity"]["passed"] and entry["parity"]["mean_cosine"] >= 0.99
        assert abs(entry["parity"]["p10_diff"]) <= 0.01
    # openvino-fp32 and -bf16 run the plain export (no file of their own), openvino-int8 its static quantization
    assert sorted(p.name for p in (model_dir / "onnx").glob("*.onnx")) == sorted({VARIANT_FILES[v] for v in expected})
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".") and p.name != ".stage-export.json"]
    # int8: the weight MatMuls are quantized, the attention (activation x activation) ones stay fp32.
    import onnx

    attention = activation_matmuls(model_dir / "onnx" / "model.onnx")
    assert len(attention) == 2 * 2  # two per layer: scores and weighted values
    int8 = onnx.load(str(model_dir / "onnx" / VARIANT_FILES[f"int8-{arch}"])).graph.node
    assert sorted(n.name for n in int8 if n.op_type == "MatMul") == sorted(attention)
    assert sum(n.op_type == "MatMulInteger" for n in int8) == 6 * 2  # q, k, v, out, ffn in, ffn out per layer

    # The layout is the one sentence-transformers' own ONNX backend reads.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(
        str(model_dir), backend="onnx", device="cpu", model_kwargs={"file_name": f"onnx/{VARIANT_FILES['O3']}"}
    )
    ours = load_onnx_embedder(model_dir, variant="O3").encode(texts)
    np.testing.assert_allclose(st.encode(texts, normalize_embeddings=True), ours, atol=1e-5)


def test_report_schema_and_serving_default(exported: dict, model_dir: Path) -> None:
    report = json.loads((model_dir / "export_report.json").read_text())
    assert report == json.loads(json.dumps(exported["report"]))
    assert tuple(report) == REPORT_KEYS
    assert report["parity"]["reference"] == "torch-fp32" and report["parity"]["max_seq_length"] == 64
    assert report["parity"]["data"]["papers"] >= 10
    assert report["throughput"]["seq_lengths"] == LENGTHS
    for n in LENGTHS:  # every throughput text fills the length (special tokens included)
        assert report["throughput"]["mean_tokens"][str(n)] == n
    assert report["machine"]["quantization_arch"] == detect_quantization_arch()
    names = list(report["variants"])
    assert names[:2] == ["torch-fp32", "torch-bf16"] and names[-len(OPENVINO) :] == OPENVINO
    assert all(n.startswith("onnx-") for n in names[2 : -len(OPENVINO)])
    assert report["versions"]["openvino"]
    for name, entry in report["variants"].items():
        assert tuple(entry) == VARIANT_KEYS, name
        assert set(entry["throughput"]) == {str(n) for n in LENGTHS} and min(entry["throughput"].values()) > 0
        assert entry["speedup_vs_torch_fp32"].keys() == entry["throughput"].keys()
    assert report["variants"]["torch-fp32"]["parity"]["mean_cosine"] == pytest.approx(1.0)
    assert set(report["variants"]["torch-fp32"]["speedup_vs_torch_fp32"].values()) == {1.0}

    # The serving default is the passing variant with the highest geometric mean of texts/s.
    def speed(entry: dict) -> float:
        return float(np.exp(np.mean(np.log(list(entry["throughput"].values())))))

    passing = {k: v for k, v in report["variants"].items() if v["parity"]["passed"]}
    best = max(passing, key=lambda k: speed(passing[k]))
    default = report["serving_default"]
    assert default["name"] == best and (default["backend"], default["variant"]) == (
        passing[best]["backend"],
        passing[best]["variant"],
    )
    onnx_best = max((k for k in passing if passing[k]["backend"] == "onnx"), key=lambda k: speed(passing[k]))
    assert report["onnx_default"] == passing[onnx_best]["variant"]
    assert serving_default(model_dir) == (default["backend"], default["variant"])
    # With no variant asked for, the ONNX loader takes the serving default (or the fastest ONNX one).
    assert load_onnx_embedder(model_dir).variant == report["onnx_default"]
    assert "* = serving default" in format_table(report) and f"{best} *" in format_table(report)


def test_unchanged_export_is_skipped_and_the_model_files_are_untouched(
    exported: dict, project: Path, processed_root: Path, make_cfg, tiny_model_dir: Path, model_dir: Path
) -> None:
    cfg = make_cfg("export", project, export_overrides(processed_root))
    assert execute(export_stage.SPEC, cfg) is None
    assert (model_dir / "onnx" / ".stage-export.json").exists()
    # The export adds files next to the model and changes none of the model's own.
    for path in tiny_model_dir.rglob("*"):
        if path.is_file():
            assert (model_dir / path.relative_to(tiny_model_dir)).read_bytes() == path.read_bytes()


def _break_o1(original):
    """A build that writes a corrupted model_O1.onnx: one initializer (the token embeddings) replaced by noise."""

    def build(model_dir, out_dir, levels, arch, calibration=None):
        import onnx
        from onnx import numpy_helper

        files = original(model_dir, out_dir, levels, arch, calibration)
        graph = onnx.load(str(files["O1"]))
        init = max(graph.graph.initializer, key=lambda t: int(np.prod(t.dims)))
        values = numpy_helper.to_array(init)
        noisy = np.random.default_rng(0).normal(0, 1, values.shape).astype(values.dtype)
        init.CopyFrom(numpy_helper.from_array(noisy, init.name))
        onnx.save(graph, str(files["O1"]))
        return files

    return build


@pytest.mark.slow
def test_parity_gate_fails_a_broken_export_naming_both_numbers_and_keeps_the_previous_export(
    exported: dict, project: Path, processed_root: Path, make_cfg, model_dir: Path, monkeypatch
) -> None:
    before = {p: tree_sha256(p) for p in (model_dir / "onnx", model_dir / "export_report.json")}
    # The stage module calls build_onnx: patch it where it is looked up.
    monkeypatch.setattr(export_stage, "build_onnx", _break_o1(build_onnx))
    cfg = make_cfg("export", project, export_overrides(processed_root, "force=true"))
    with pytest.raises(ParityError) as err:
        export_stage.run(cfg)
    message = str(err.value)
    # Noise in place of the token embeddings: the cosine to torch is near zero, of either sign.
    assert re.search(r"onnx-O1: mean cosine -?0\.\d{4}", message) and "needs >= 0.9900" in message
    assert "P@10 " in message and "vs torch-fp32 " in message and "points" in message
    assert "onnx-fp32" not in message and "onnx-O3" not in message  # only the broken variant is named
    assert "previous export is left as it was" in message
    assert {p: tree_sha256(p) for p in before} == before
    assert not [p for p in model_dir.iterdir() if p.name.startswith((".onnx", ".export-"))]


def test_parity_figures_and_gate() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["a", "b", "c"]), 20)
    centers = rng.normal(size=(3, 16))
    ref = centers[np.repeat(np.arange(3), 20)] + 0.3 * rng.normal(size=(60, 16))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ref_p10 = subject_p10(ref, labels)
    same = parity(ref, ref, labels, ref_p10, 0.99, 0.01)
    assert same["passed"] and same["mean_cosine"] == pytest.approx(1.0) and same["p10_diff"] == 0
    noisy = ref + 0.5 * rng.normal(size=ref.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    bad = parity(ref, noisy, labels, ref_p10, 0.99, 0.01)
    assert not bad["passed"] and bad["mean_cosine"] < 0.99 and bad["p10"] < ref_p10
    # A P@10 drop alone fails it too, and the thresholds are inclusive.
    assert not parity(ref, ref, labels, ref_p10 + 0.02, 0.99, 0.01)["passed"]
    assert parity(ref, ref, labels, ref_p10 + 0.01, 0.99, 0.01)["passed"]


def test_auto_backend_follows_the_serving_default(exported: dict, model_dir: Path, tmp_path: Path) -> None:
    from arxiv_embeddings.backends.onnx_embedder import serving_default

    backend, variant = serving_default(model_dir) or ("", "")
    emb = load_embedder(model_dir, backend="auto", device="cpu")
    assert (emb.backend, emb.variant) == (backend, variant)
    # Without an export, auto is torch fp32.
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("onnx", "export_report.json"))
    plain = load_embedder(bare, backend="auto", device="cpu")
    assert (plain.backend, plain.variant) == ("torch", "fp32")


def test_onnx_embedder_matches_the_torch_model(exported: dict, model_dir: Path, texts: list[str]) -> None:
    torch_emb = TorchEmbedder(model_dir, device="cpu")
    reference = torch_emb.encode(texts)
    emb = load_embedder(model_dir, backend="onnx", variant="fp32")
    assert isinstance(emb, OnnxEmbedder) and isinstance(emb, Embedder) and isinstance(torch_emb, Embedder)
    assert (emb.backend, emb.variant, emb.device) == ("onnx", "fp32", "cpu")
    assert emb.dimension == torch_emb.dimension == 32 and emb.max_seq_length == torch_emb.max_seq_length == 64
    vectors = emb.encode(texts, batch_size=5)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 32)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.encode(texts[::-1], batch_size=32)[::-1], vectors, atol=1e-5)
    assert emb.encode([]).shape == (0, 32)
    assert emb.token_counts(texts).max() == 64

    short = load_onnx_embedder(model_dir, variant="fp32", max_seq_length=16, threads=1)
    assert short.max_seq_length == 16 and short.threads == 1 and short.token_counts(texts).max() == 16
    torch_short = TorchEmbedder(model_dir, device="cpu", max_seq_length=16)
    np.testing.assert_allclose(short.encode(texts), torch_short.encode(texts), atol=1e-5)
    assert np.abs(short.encode(texts) - vectors).max() > 1e-3  # the length did change what was embedded
    with pytest.raises(TypeError, match="list of texts"):
        emb.encode("one string")  # type: ignore[arg-type]


def test_static_int8_quantizes_every_weight_matmul_and_calibrates_on_train_papers(
    exported: dict, model_dir: Path, processed_root: Path, project: Path, make_cfg
) -> None:
    import onnx

    from arxiv_embeddings.export.measure import load_calibration

    graph = onnx.load(str(model_dir / "onnx" / VARIANT_FILES["openvino-int8"])).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    matmuls = {n.name: [producer.get(i, "initializer") for i in n.input] for n in graph.node if n.op_type == "MatMul"}
    weights = [name for name in matmuls if name not in activation_matmuls(model_dir / "onnx" / "model.onnx")]
    assert len(weights) == 6 * 2  # q, k, v, out, ffn in, ffn out per layer
    for name in weights:  # int8 weight and int8 activation, each dequantized right before the product
        assert matmuls[name] == ["DequantizeLinear", "DequantizeLinear"], (name, matmuls[name])
    # the product of the softmax probabilities and the values stays in floating point (NNCF's transformer preset)
    assert [n for n, inputs in matmuls.items() if "Softmax" in inputs] == [
        f"/encoder/layer.{i}/attention/self/MatMul_1" for i in range(2)
    ]
    report = exported["report"]["variants"]["openvino-int8"]
    assert report["file"] == "onnx/model_qint8_static.onnx" and report["parity"]["passed"]

    # The calibration papers: a seeded choice of train papers, never the test papers the gate scores.
    processed = processed_root / "data" / "processed"
    cfg = make_cfg("export", project, [*export_overrides(processed_root), "export.calibration.papers=50"])
    chosen = load_calibration(cfg)
    train = set(paper_text(pq.read_table(processed / "train.parquet"), "title_abstract"))
    test = set(paper_text(pq.read_table(processed / "test.parquet"), "title_abstract"))
    assert len(chosen) == len(set(chosen)) == 50 and set(chosen) <= train and not set(chosen) & test
    assert load_calibration(cfg) == chosen
    # Without a train split the export stops before any work, naming the split and both ways out.
    only_test = project / "only-test"
    only_test.mkdir()
    shutil.copy(processed / "test.parquet", only_test / "test.parquet")
    with pytest.raises(FileNotFoundError, match=r"train\.parquet.*inv preprocess.*export\.openvino=\[fp32,bf16\]"):
        export_stage.run(
            make_cfg("export", project, [*export_overrides(processed_root), f"paths.processed_dir={only_test}"])
        )
    assert (
        load_calibration(
            make_cfg("export", project, [*export_overrides(processed_root), "seed=1", "export.calibration.papers=50"])
        )
        != chosen
    )


def test_openvino_variants_match_torch_and_encode_from_several_threads(
    exported: dict, model_dir: Path, texts: list[str]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    reference = TorchEmbedder(model_dir, device="cpu").encode(texts)
    for variant in OPENVINO:
        emb = load_embedder(model_dir, backend="onnx", variant=variant)
        assert isinstance(emb, OnnxEmbedder) and (emb.backend, emb.variant, emb.engine) == ("onnx", variant, "openvino")
        assert emb.onnx_path.name == VARIANT_FILES[variant] and "engine='openvino'" in repr(emb)
        vectors = emb.encode(texts, batch_size=5)
        assert vectors.dtype == np.float32 and vectors.shape == reference.shape
        cosine = np.sum(vectors * reference, axis=1)
        # fp32 is the same arithmetic as onnxruntime's; bf16 rounds every matrix product, int8 the quantized ones
        assert cosine.min() >= (0.9999 if variant == "openvino-fp32" else 0.99), (variant, cosine.min())
        np.testing.assert_allclose(emb.encode(texts[::-1], batch_size=32)[::-1], vectors, atol=2e-2)
        # a replica compiles the model again (one compiled model runs one request at a time)
        replicas = [emb.replica() for _ in range(3)]
        assert len({id(e.session.compiled) for e in [emb, *replicas]}) == 4
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda e: e.encode(texts, batch_size=4), replicas))
        for other in results:
            np.testing.assert_allclose(other, vectors, atol=1e-5)
    with pytest.raises(ValueError, match="runs on OpenVINO's CPU runtime; use device='cpu'"):
        load_onnx_embedder(model_dir, variant="openvino-fp32", device="cuda")


def test_without_openvino_the_default_falls_back_to_the_fastest_onnxruntime_variant(
    exported: dict, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serving install without the openvino extra, for an export whose fastest ONNX variant runs on OpenVINO."""
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    report = json.loads((folder / "export_report.json").read_text())
    report["serving_default"] = {**report["serving_default"], "backend": "onnx", "variant": "openvino-fp32"}
    (folder / "export_report.json").write_text(json.dumps(report))
    assert load_onnx_embedder(folder).variant == "openvino-fp32"  # OpenVINO installed: the default as exported

    monkeypatch.setattr(onnx_embedder, "openvino_available", lambda: False)
    fallback = fastest_onnxruntime_variant(report)
    assert fallback is not None and fallback not in OPENVINO_VARIANTS
    entries = [v for v in report["variants"].values() if v["backend"] == "onnx" and v["variant"] not in OPENVINO]
    assert fallback == max(entries, key=lambda v: np.prod(list(v["throughput"].values())))["variant"]
    emb = load_onnx_embedder(folder)
    assert (emb.variant, emb.engine) == (fallback, "onnxruntime")
    assert "openvino-fp32" not in exported_variants(folder) and "fp32" in exported_variants(folder)
    with pytest.raises(
        ExportNotFoundError,
        match=r'variants run on OpenVINO, which is not installed: pip install "arxiv-embeddings\[openvino\]"',
    ):
        load_onnx_embedder(folder, variant="openvino-fp32")


def test_the_index_encodes_with_an_openvino_variant_on_index_threads(
    exported: dict, model_dir: Path, processed_root: Path, tmp_path: Path, make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """index.threads reaches an ONNX model's own threads (before, a one-process run used every core), and an
    openvino-* variant indexes the same papers as torch does."""
    from helpers.index import index_overrides

    from arxiv_embeddings.index import stage as index_stage
    from arxiv_embeddings.index.search import PaperIndex

    loaded: list[Embedder] = []
    real = index_stage.load_index_embedder

    def recording(*args, **kwargs):  # the stage's own loader, recording what it returned
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(index_stage, "load_index_embedder", recording)
    common = ("index.type=flat", "index.eval.queries=50", "index.threads=1")
    built = index_stage.run(
        make_cfg(
            "index",
            tmp_path / "ov",
            index_overrides(processed_root, model_dir, *common, "index.backend=onnx", "index.variant=openvino-fp32"),
        )
    )
    (emb,) = loaded
    assert isinstance(emb, OnnxEmbedder) and (emb.variant, emb.engine, emb.threads) == ("openvino-fp32", "openvino", 1)
    reference = index_stage.run(
        make_cfg("index", tmp_path / "torch", index_overrides(processed_root, model_dir, *common))
    )
    ov, pt = PaperIndex.load(built["dir"]), PaperIndex.load(reference["dir"])
    assert ov.metadata.column("arxiv_id").to_pylist() == pt.metadata.column("arxiv_id").to_pylist()
    np.testing.assert_allclose(ov.index.reconstruct_n(0, len(ov)), pt.index.reconstruct_n(0, len(pt)), atol=1e-4)


_TORCH_FREE = textwrap.dedent(
    """
    import importlib.abc, json, sys
    import numpy as np

    BLOCKED = ("torch", "transformers", "sentence_transformers", "optimum")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the ONNX path must not import it")
            return None

    sys.meta_path.insert(0, Block())
    try:
        import torch  # noqa: F401
        raise SystemExit("torch was importable")
    except ImportError:
        pass

    from arxiv_embeddings.backends import load_embedder

    model_dir, texts_path, out_dir = sys.argv[1:4]
    texts = json.load(open(texts_path))
    default = load_embedder(model_dir, backend="onnx")
    fp32 = load_embedder(model_dir, backend="onnx", variant="fp32")
    np.save(f"{out_dir}/default.npy", default.encode(texts))
    np.save(f"{out_dir}/fp32.npy", fp32.encode(texts))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    json.dump({"variant": default.variant, "loaded": loaded}, open(f"{out_dir}/info.json", "w"))
    """
)


@pytest.mark.slow
def test_onnx_embedder_runs_without_torch_installed(
    exported: dict, model_dir: Path, texts: list[str], tmp_path: Path
) -> None:
    reference = TorchEmbedder(model_dir, device="cpu").encode(texts)  # in this (torch) process
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    script = tmp_path / "torch_free.py"
    script.write_text(_TORCH_FREE)
    env = {**os.environ, "PYTHONPATH": str(Path(export_stage.__file__).parents[2])}
    proc = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(tmp_path / "texts.json"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["loaded"] == [] and info["variant"] == exported["report"]["onnx_default"]
    np.testing.assert_allclose(np.load(tmp_path / "fp32.npy"), reference, atol=1e-5)
    cosine = np.sum(np.load(tmp_path / "default.npy") * reference, axis=1)
    assert cosine.mean() >= 0.99


def test_clear_errors(exported: dict, project: Path, processed_root: Path, make_cfg, model_dir: Path, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"Unknown ONNX variant 'int4'; known variants: fp32, O1"):
        load_onnx_embedder(model_dir, variant="int4")
    with pytest.raises(ExportNotFoundError, match=r"'O2' was not exported .* exported variants: fp32, O1, O3"):
        load_onnx_embedder(model_dir, variant="O2")
    with pytest.raises(ExportNotFoundError, match="Model folder not found"):
        load_onnx_embedder(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("onnx", "export_report.json"))
    with pytest.raises(ExportNotFoundError, match=r"has no ONNX export.*uv run inv export"):
        load_onnx_embedder(bare)

    def cfg(*extra: str):
        return make_cfg("export", project, export_overrides(processed_root, *extra))

    with pytest.raises(ModelNotFoundError, match=r"No trained model for run 'missing'.*uv run inv train"):
        export_stage.run(cfg("export.model=missing"))
    with pytest.raises(ModelNotFoundError, match="Model path not found"):
        export_stage.run(cfg(f"export.model={tmp_path / 'no' / 'such' / 'model'}"))
    with pytest.raises(ConfigError, match=r"export.quantization_arch='sse4'.*avx512_vnni, avx512, avx2, arm64"):
        export_stage.validate(cfg("export.quantization_arch=sse4"))
    with pytest.raises(ConfigError, match=r"export.optimization_levels=.O5"):
        export_stage.validate(cfg("export.optimization_levels=[O5]"))
    if not cuda_onnxruntime():
        with pytest.raises(ConfigError, match="O4 is fp16 and runs on a GPU only"):
            export_stage.validate(cfg("export.optimization_levels=[O4]"))
    with pytest.raises(ConfigError, match=r"export\.parity\.min_cosine"):
        export_stage.validate(cfg("export.parity.min_cosine=1.5"))
    with pytest.raises(ConfigError, match=r"export\.openvino='int4'.*fp32, bf16, int8"):
        export_stage.validate(cfg("export.openvino=[int4]"))
    with pytest.raises(ConfigError, match=r"export\.calibration\.papers"):
        export_stage.validate(cfg("export.calibration.papers=0"))
    with pytest.raises(ConfigError, match=r"export\.openvino.*without repeats"):
        export_stage.validate(cfg("export.openvino=bf16"))
    with pytest.raises(ConfigError, match=r"export\.throughput\.torch"):
        export_stage.validate(cfg("export.throughput.torch=[fp8]"))
    with pytest.raises(ConfigError, match="has 256 positions"):
        export_stage.run(cfg("export.throughput.seq_lengths=[512]"))


def test_quantization_arch_detection_and_hub_names(project: Path, processed_root: Path, make_cfg) -> None:
    assert detect_quantization_arch({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64") == "avx512_vnni"
    assert detect_quantization_arch({"avx2", "avx512f", "avx512bw"}, "x86_64") == "avx512"
    assert detect_quantization_arch({"avx2", "fma"}, "x86_64") == "avx2"
    assert detect_quantization_arch(set(), "aarch64") == "arm64"
    assert detect_quantization_arch({"sse4_2"}, "x86_64") is None
    assert planned_variants(make_cfg("export", project, ["export.quantize=false"])) == ["fp32", "O3"]
    # A Hub name is exported into a folder of its own under models/ (the installed package is read-only).
    cfg = make_cfg("export", project, ["export.model=sentence-transformers/all-MiniLM-L6-v2"])
    target, hub = model_target(cfg)
    assert (
        target == project / "models" / "all-MiniLM-L6-v2" / "final" and hub == "sentence-transformers/all-MiniLM-L6-v2"
    )
    # Its stage inputs are the files of its local source, the same before and after it is saved under models/.
    source = Path(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    inputs = export_stage.SPEC.inputs(cfg)
    # ... then the test split of the gate and the train split that openvino-int8 calibrates on.
    assert source / "model.safetensors" in inputs and [p.name for p in inputs[-2:]] == ["test.parquet", "train.parquet"]
    assert all(p.is_relative_to(source) for p in inputs[:-2])
    outputs = export_stage.SPEC.outputs(cfg)[:-1]
    assert [p.parent.name for p in outputs] == ["onnx"] * (len(planned_variants(cfg)) + 1)
    assert outputs[-1].name == VARIANT_FILES["openvino-int8"]
    no_int8 = make_cfg(
        "export", project, ["export.model=sentence-transformers/all-MiniLM-L6-v2", "export.openvino=[fp32]"]
    )
    assert [p.name for p in export_stage.SPEC.inputs(no_int8)[-1:]] == ["test.parquet"]


@pytest.mark.slow
def test_cli_exits_non_zero_on_a_missing_model(project: Path, processed_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "arxiv_embeddings.export", f"paths.root_dir={project}", "export.model=missing"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "No trained model for run 'missing'" in proc.stderr
