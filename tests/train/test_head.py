"""train.head: the linear subject head is fit reproducibly, lifts retrieval where a linear map can, becomes part of
the saved model, and is served the same by the torch and the ONNX embedders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.train import FAST

from arxiv_embeddings import pairs
from arxiv_embeddings.backends import load_embedder
from arxiv_embeddings.backends.onnx_embedder import read_pipeline
from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.export import stage as export_stage
from arxiv_embeddings.io import read_json
from arxiv_embeddings.metrics import RankingCutoffs, label_retrieval
from arxiv_embeddings.train import stage as train_stage
from arxiv_embeddings.train.head import HeadFit, add_head, fit_lda_head, fit_linear_head

CUTOFFS = RankingCutoffs(precision_recall_at=(10,), mrr_at=(10,), ndcg_at=(), map_at=(), accuracy_at=())
#: The fp32 ONNX export alone, timed on a handful of texts.
EXPORT = [
    "run_name=h",
    "export.optimization_levels=[]",
    "export.throughput.texts=8",
    "export.throughput.batch_size=8",
    "export.throughput.seq_lengths=[32]",
    "export.throughput.repeats=1",
]
HEAD = ["train.head.enabled=true", "train.head.kind=lda", "train.head.papers=120", "train.head.components=3"]


def _clustered(seed: int, n_per: int = 40, subjects: int = 6, dim: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Subjects apart along 4 dimensions, drowned by large noise along the other 20: a linear map can undo that."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(subjects, 4)) * 0.6
    labels = np.repeat(np.arange(subjects), n_per).astype(str)
    x = rng.normal(size=(len(labels), dim)) * 1.5
    x[:, :4] = centers[labels.astype(int)] + rng.normal(size=(len(labels), 4)) * 0.25
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def _p10(x: np.ndarray, labels: np.ndarray) -> float:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(label_retrieval(x, labels, cutoffs=CUTOFFS).per_query["precision@10"].mean())


def test_the_head_is_reproducible_and_lifts_retrieval_on_papers_it_was_not_fit_on() -> None:
    x, y = _clustered(0)
    x_new, y_new = _clustered(1)  # same kind of data, other draws: what the head does on unseen rows
    kwargs = {"epochs": 30, "learning_rate": 1e-2, "batch_size": 64, "temperature": 0.1, "seed": 3}
    fit = fit_linear_head(x, y, **kwargs)
    again = fit_linear_head(x, y, **kwargs)
    np.testing.assert_array_equal(fit.weight, again.weight)
    np.testing.assert_array_equal(fit.bias, again.bias)
    assert fit.weight.shape == (24, 24) and fit.papers == 240 and fit.subjects == 6 and len(fit.losses) == 30
    assert fit.losses[-1] < fit.losses[0]
    before, after = _p10(x_new, y_new), _p10(x_new @ fit.weight.T + fit.bias, y_new)
    assert after > before + 0.1, (before, after)
    other_seed = fit_linear_head(x, y, **{**kwargs, "seed": 4})
    assert not np.array_equal(other_seed.weight, fit.weight)


def test_the_lda_head_is_closed_form_keeps_the_dimension_and_lifts_retrieval_on_unseen_rows() -> None:
    x, y = _clustered(0)
    x_new, y_new = _clustered(1)
    fit = fit_lda_head(x, y, components=3, shrinkage=0.05)
    again = fit_lda_head(x, y, components=3, shrinkage=0.05)
    np.testing.assert_array_equal(fit.weight, again.weight)
    assert fit.kind == "lda" and fit.components == 3 and fit.weight.shape == (24, 24) and fit.losses == []
    # Only the first `components` rows project; the rest are zero, so the output keeps the model's dimension.
    assert np.abs(fit.weight[:3]).sum() > 0 and not fit.weight[3:].any() and not fit.bias[3:].any()
    # Centred on the papers' mean: the mean paper maps to the origin of the discriminant space.
    np.testing.assert_allclose(fit.weight @ x.mean(0) + fit.bias, 0.0, atol=1e-4)
    before, after = _p10(x_new, y_new), _p10(x_new @ fit.weight.T + fit.bias, y_new)
    assert after > before + 0.1, (before, after)
    # 6 subjects give at most 5 discriminant directions, whatever is asked.
    assert fit_lda_head(x, y, components=50, shrinkage=0.05).components == 5


def test_the_head_refuses_what_it_cannot_fit() -> None:
    x, y = _clustered(0)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        fit_linear_head(
            x, np.full(len(x), "cs.LG"), epochs=1, learning_rate=1e-3, batch_size=8, temperature=0.05, seed=0
        )
    with pytest.raises(ValueError, match="must be"):
        fit_linear_head(x, y[:-1], epochs=1, learning_rate=1e-3, batch_size=8, temperature=0.05, seed=0)
    with pytest.raises(ValueError, match="at least 2 subjects"):
        fit_lda_head(x, np.full(len(x), "cs.LG"), components=4, shrinkage=0.05)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.head.kind=pca", r"train.head.kind='pca': choose one of lda, supcon"),
        ("train.head.papers=1", r"train.head.papers=1: must be an integer >= 2"),
        ("train.head.components=0", r"train.head.components=0: must be an integer >= 1"),
        ("train.head.shrinkage=1.5", r"train.head.shrinkage=1.5: must be a number in \[0, 1\]"),
        ("train.head.kind=supcon train.head.epochs=0", r"train.head.epochs=0: must be an integer >= 1"),
        ("train.head.kind=supcon train.head.learning_rate=0", r"train.head.learning_rate=0: must be a number > 0"),
        ("train.head.kind=supcon train.head.temperature=-1", r"train.head.temperature=-1: must be a number > 0"),
    ],
)
def test_bad_head_settings_are_named(tmp_path: Path, override: str, message: str) -> None:
    cfg = compose("train", [f"paths.root_dir={tmp_path}", "train.head.enabled=true", *override.split()])
    with pytest.raises(ConfigError, match=message):
        train_stage.validate(cfg)


def test_a_lora_run_trains_without_the_head_and_says_so(tmp_path: Path) -> None:
    from loguru import logger

    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING")
    try:
        cfg = compose("train", [f"paths.root_dir={tmp_path}", "model=bge_large"])  # the head is on by default
        train_stage.validate(cfg)
    finally:
        logger.remove(sink)
    assert not train_stage.head_enabled(cfg)
    assert any("train.head.enabled=true with model.lora" in m for m in messages), messages
    # A full model keeps it, and the LoRA experiment turns it off itself (no warning).
    assert train_stage.head_enabled(compose("train", [f"paths.root_dir={tmp_path}"]))
    cfg = compose("train", [f"paths.root_dir={tmp_path}", "experiment=qwen_lora"])
    assert not cfg.train.head.enabled


def test_the_head_encodes_its_papers_at_the_batch_size_it_is_given(processed_root: Path, tiny_model_dir: Path) -> None:
    """The stage passes the head trainer.per_device_eval_batch_size (its own setting, which its fingerprint covers,
    unlike another stage's evaluate.encode.batch_size); the head embeds its papers that many at a time."""
    from sentence_transformers import SentenceTransformer

    from arxiv_embeddings.io import read_parquet
    from arxiv_embeddings.train.head import sample_papers, train_head

    assert "trainer" in train_stage.SPEC.config_keys and "evaluate" not in train_stage.SPEC.config_keys
    papers = sample_papers(read_parquet(processed_root / "data" / "processed" / "train.parquet"), 40, seed=3)
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    encode, batch_sizes = model.encode, []

    def spy(*args, **kwargs):
        batch_sizes.append(kwargs.get("batch_size"))
        return encode(*args, **kwargs)

    model.encode = spy
    info = train_head(
        model,
        papers,
        "title_abstract",
        "fp32",
        kind="supcon",
        options={"epochs": 1, "learning_rate": 1e-3, "batch_size": 16, "temperature": 0.1, "papers": 40},
        seed=3,
        encode_batch_size=7,
    )
    assert batch_sizes == [7] and info["papers"] == 40 and info["epochs"] == 1 and info["kind"] == "supcon"
    assert len(info["losses"]) == 1 and info["components"] is None


@pytest.fixture(scope="module")
def headed_model(tmp_path_factory: pytest.TempPathFactory, processed_root: Path, tiny_model_dir: Path) -> Path:
    """The tiny model trained three steps with a subject head (train.head), through the stage's own run."""
    root = tmp_path_factory.mktemp("head_root")
    shutil.copytree(processed_root / "data" / "processed", root / "data" / "processed")
    pairs.run(compose("pairs", [f"paths.root_dir={root}", "pairs.num_train=64", "pairs.num_eval=16"]))
    cfg = compose("train", [f"paths.root_dir={root}", f"model.name={tiny_model_dir}", "run_name=h", *FAST, *HEAD])
    assert str(root / "data" / "processed" / "train.parquet") in map(str, train_stage.SPEC.inputs(cfg))
    return Path(train_stage.run(cfg)["model"])


def test_training_with_a_head_saves_it_in_the_model(headed_model: Path, processed_root: Path) -> None:
    from sentence_transformers import SentenceTransformer

    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((headed_model / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Normalize", "Dense", "Normalize"]
    summary = read_json(headed_model / "train_summary.json")
    head = summary["head"]
    assert head["kind"] == "lda" and head["papers"] == 120 and head["subjects"] > 1 and head["shrinkage"] == 0.02
    assert head["components"] == min(3, head["subjects"] - 1) and "epochs" not in head
    assert 0.0 <= summary["test"]["test_cosine_precision@10"] <= 1.0

    model = SentenceTransformer(str(headed_model), device="cpu")
    texts = ["A survey of black hole thermodynamics", "Graph neural networks for molecules"]
    vectors = model.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The Dense is the fitted map, not an identity: the vectors differ from the encoder's own.
    encoder_only = SentenceTransformer(modules=[model[0], model[1], model[2]], device="cpu").encode(texts)
    assert np.abs(vectors - encoder_only).max() > 1e-4


def test_a_second_head_is_not_stacked(headed_model: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(headed_model), device="cpu")
    dim = model.get_embedding_dimension()
    fit = HeadFit(np.eye(dim, dtype=np.float32), np.zeros(dim, np.float32), [0.0], 2, 2, 0.0)
    with pytest.raises(ValueError, match="already has a Dense module"):
        add_head(model, fit)


def test_the_onnx_embedder_serves_the_head_like_torch(
    headed_model: Path, processed_root: Path, make_cfg, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    shutil.copytree(headed_model, project / "models" / "h" / "final")
    model_dir = project / "models" / "h" / "final"
    cfg = make_cfg("export", project, [f"paths.processed_dir={processed_root / 'data' / 'processed'}", *EXPORT])
    export_stage.run(cfg)
    pipeline = read_pipeline(model_dir)
    assert [kind for kind, _, _ in pipeline.post] == ["normalize", "dense", "normalize"] and pipeline.normalize
    texts = ["A survey of black hole thermodynamics", "Graph neural networks for molecules", "Sparse PCA bounds"]
    reference = TorchEmbedder(model_dir, device="cpu").encode(texts)
    onnx = load_embedder(model_dir, backend="onnx", variant="fp32")
    np.testing.assert_allclose(onnx.encode(texts), reference, atol=1e-5)
    assert onnx.dimension == reference.shape[1]


def test_the_onnx_embedder_names_a_dense_it_cannot_run(headed_model: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "tanh"
    shutil.copytree(headed_model, model_dir)
    config = model_dir / "3_Dense" / "config.json"
    cfg = json.loads(config.read_text())
    config.write_text(json.dumps({**cfg, "activation_function": "torch.nn.modules.activation.Tanh"}))
    with pytest.raises(ValueError, match=r"Dense activation 'torch.nn.modules.activation.Tanh' is not supported"):
        read_pipeline(model_dir)


def test_without_fine_tuning_the_base_is_kept_and_only_the_head_is_fit(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path
) -> None:
    """train.fine_tune=false: no pairs read, no step taken; the saved model is the base's encoder with the head over it,
    so search (served by the encoder) is the base model's own."""
    from sentence_transformers import SentenceTransformer

    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")  # no pairs at all
    cfg = compose(
        "train",
        [
            f"paths.root_dir={tmp_path}",
            f"model.name={tiny_model_dir}",
            "run_name=f",
            *FAST,
            *HEAD,
            "train.fine_tune=false",
        ],
    )
    inputs = [str(p) for p in train_stage.SPEC.inputs(cfg)]
    assert not any("pairs" in Path(p).parts for p in inputs), inputs
    final = Path(train_stage.run(cfg)["model"])
    summary = read_json(final / "train_summary.json")
    assert summary["fine_tune"] is False and summary["global_step"] == 0 and summary["train"] == {}
    assert summary["head"]["kind"] == "lda" and summary["pair_type"] is None
    # scored on both tasks, as a mix is
    assert 0.0 <= summary["test"]["test_cosine_precision@10"] <= 1.0
    assert any(key.startswith("test_title_abstract_") for key in summary["test"]), summary["test"]
    # train.search_model=base (the default) keeps no copy here: the encoder is the base already and serves search
    assert compose("train", []).train.search_model == "base"
    assert read_json(final / "tasks.json")["tasks"]["search"] == "encoder" and not (final / "base").exists()

    texts = ["A survey of black hole thermodynamics", "Graph neural networks for molecules"]
    base = SentenceTransformer(str(tiny_model_dir), device="cpu").encode(texts, normalize_embeddings=True)
    model = SentenceTransformer(str(final), device="cpu")
    encoder = SentenceTransformer(modules=[model[0], model[1], model[2]], device="cpu").encode(texts)
    np.testing.assert_allclose(encoder, base, atol=1e-5)  # the base's weights, untouched
    assert np.abs(model.encode(texts) - base).max() > 1e-4  # the head is a fitted map


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.head.enabled=false"], r"train.fine_tune=false: keeps the base model .* set train.head.enabled=true"),
        (["experiment=qwen_lora"], r"train.fine_tune=false: trains no weights .* drop model.lora"),
        (["train.fine_tune=maybe"], None),
    ],
)
def test_head_only_runs_need_a_head_and_a_full_model(tmp_path: Path, overrides: list[str], message: str | None) -> None:
    if message is None:  # not a boolean
        cfg = compose("train", [f"paths.root_dir={tmp_path}", *overrides])
        with pytest.raises(ConfigError, match=r"train.fine_tune: got 'maybe'; expected true or false"):
            train_stage.validate(cfg)
        return
    cfg = compose("train", [f"paths.root_dir={tmp_path}", *overrides, "train.fine_tune=false"])
    with pytest.raises(ConfigError, match=message):
        train_stage.validate(cfg)


def test_the_blended_lda_head_keeps_the_papers_principal_directions_at_the_asked_share() -> None:
    """blend > 0 fills the rows the discriminant directions leave unused with the papers' principal directions,
    their part of an output's squared length blend**2 times the discriminant part's; the discriminant rows stay."""
    x, labels = _clustered(5)
    plain = fit_lda_head(x, labels, components=3, shrinkage=0.02)
    k = plain.components
    for blend in (0.5, 1.0):
        fit = fit_lda_head(x, labels, components=3, shrinkage=0.02, blend=blend)
        np.testing.assert_allclose(fit.weight[:k], plain.weight[:k], atol=1e-6)
        out = x @ fit.weight.T.astype(np.float64) + fit.bias
        ratio = np.square(out[:, k:]).sum(1).mean() / np.square(out[:, :k]).sum(1).mean()
        assert ratio == pytest.approx(blend**2, rel=1e-3)
    assert not plain.weight[k:].any()
