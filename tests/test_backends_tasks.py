"""Task outputs in the embedding backends: tasks.json read in one place, and ``encode(output=...)`` on every
backend. ``encoder`` (Transformer and Pooling only, L2-normalized) equals ``model`` for a folder without a head,
and for a folder with a Dense head it is the encoder under the head: the tiny model the headed copy was made from."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.api import head_weights, headed_copy, with_onnx_of, write_tasks

from arxiv_embeddings.backends import load_embedder
from arxiv_embeddings.backends.tasks import (
    DEFAULT_TASKS,
    TASKS,
    TasksFileError,
    UnknownTaskError,
    read_tasks,
    tasks_of,
)
from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
from arxiv_embeddings.layout import TASKS_FILE
from arxiv_embeddings.vectors import normalize_rows

TEXTS = [
    "Graph neural networks for molecular property prediction",
    "Dark matter halos in dwarf galaxies\nWe simulate the rotation curves of twelve dwarf galaxies.",
    "Sparse PCA",
]


@pytest.fixture(scope="module")
def headed(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return headed_copy(tiny_model_dir, tmp_path_factory.mktemp("headed") / "model")


@pytest.fixture(scope="module")
def onnx_pair(tiny_model_dir: Path, headed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tiny model, headed copy), both with one fp32 ONNX export of their shared Transformer."""
    from arxiv_embeddings.export.build import build_onnx

    root = tmp_path_factory.mktemp("onnx_tasks")
    headed_onnx = root / "headed"
    shutil.copytree(headed, headed_onnx)
    (headed_onnx / "onnx").mkdir()
    build_onnx(headed_onnx, headed_onnx / "onnx", levels=[], arch=None)
    return with_onnx_of(tiny_model_dir, headed_onnx, root / "tiny"), headed_onnx


def _with_head(vectors: np.ndarray) -> np.ndarray:
    """What the head of :func:`headed_copy` makes of the tiny model's (normalized) vectors: Dense, Normalize."""
    weight, bias = head_weights(vectors.shape[1])
    return normalize_rows(vectors @ weight.T + bias)


# --------------------------------------------------------------------------------------------- tasks.json
def test_a_folder_without_tasks_json_serves_every_task_on_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    for where in (tiny_model_dir, None, tmp_path / "missing", "sentence-transformers/all-MiniLM-L6-v2"):
        tasks = tasks_of(where) if isinstance(where, str) else read_tasks(where)
        assert tasks == DEFAULT_TASKS, where
    assert DEFAULT_TASKS.as_dict() == {"default": "subject", "tasks": dict.fromkeys(TASKS, "model")}
    assert DEFAULT_TASKS.source is None and "has no tasks.json" in DEFAULT_TASKS.origin


def test_tasks_json_is_read_and_its_map_cannot_be_changed(tmp_path: Path) -> None:
    write_tasks(tmp_path, {"default": "search", "tasks": {"graded": "model", "search": "encoder"}})
    tasks = read_tasks(tmp_path)
    assert (tasks.default, tasks.names, tasks.outputs) == ("search", ("search", "graded"), ("model", "encoder"))
    assert tasks.resolve(None) == ("search", "encoder") and tasks.output_of("graded") == "model"
    assert tasks.source == str(tmp_path / TASKS_FILE)
    with pytest.raises(TypeError):
        tasks.tasks["search"] = "model"  # type: ignore[index]
    with pytest.raises(UnknownTaskError) as err:
        tasks.resolve("subject")  # a known task, but not one this folder serves
    assert "'subject'" in str(err.value) and "valid tasks: search, graded" in str(err.value)
    assert str(tmp_path / TASKS_FILE) in str(err.value)
    write_tasks(tmp_path, {"tasks": {"subject": "encoder"}})
    assert read_tasks(tmp_path).resolve(None) == ("subject", "encoder")  # no default: subject


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("{not json", ["not readable JSON", '"default": "subject"']),
        ('["subject"]', ["not an object", "['subject']"]),
        ('{"default": "subject", "tasks": {}}', ["'tasks' is {}", "subject, search, graded", "model, encoder"]),
        ('{"tasks": {"subject": "head"}}', ["tasks.subject = 'head' is not an output", "model (", "encoder ("]),
        ('{"tasks": {"subject": 1}}', ["tasks.subject = 1 is not an output", "valid outputs: model"]),
        ('{"tasks": {"serach": "model"}}', ["'serach' is not a task", "valid tasks: subject, search, graded"]),
        ('{"default": "graded", "tasks": {"subject": "model"}}', ["default = 'graded' is not one of its tasks"]),
        ('{"default": "subject", "tasks": {"subject": "model"}, "search": 1}', ["unknown key(s) ['search']"]),
    ],
)
def test_a_malformed_tasks_json_names_the_file_the_value_and_the_fix(
    tmp_path: Path, content: str, named: list[str]
) -> None:
    (tmp_path / TASKS_FILE).write_text(content)
    with pytest.raises(TasksFileError) as err:
        read_tasks(tmp_path)
    message = str(err.value)
    assert str(tmp_path / TASKS_FILE) in message
    for part in named:
        assert part in message, message


# ------------------------------------------------------------------------------------------------- torch
def test_torch_encoder_is_the_model_without_a_head(tiny_model_dir: Path) -> None:
    embedder = TorchEmbedder(tiny_model_dir, device="cpu")
    model, encoder = embedder.encode(TEXTS), embedder.encode(TEXTS, output="encoder")
    np.testing.assert_allclose(encoder, model, atol=1e-6)
    assert embedder._encoder is embedder.model  # only a Normalize after the Pooling: no second module chain


def test_torch_encoder_leaves_the_head_out(tiny_model_dir: Path, headed: Path) -> None:
    pooled = TorchEmbedder(tiny_model_dir, device="cpu").encode(TEXTS)  # Transformer -> Pooling -> Normalize
    embedder = TorchEmbedder(headed, device="cpu")
    model = embedder.encode(TEXTS)
    encoder = embedder.encode(TEXTS, output="encoder", normalize=False)  # normalized whatever normalize says
    np.testing.assert_allclose(encoder, pooled, atol=1e-5)
    np.testing.assert_allclose(model, _with_head(pooled), atol=1e-5)
    assert np.abs(model - encoder).max() > 0.1
    assert embedder.encode([], output="encoder").shape == (0, pooled.shape[1])
    # The encoder shares the model's modules (no copy of the weights); a replica's encoder runs the replica's own.
    assert embedder._encoder[0] is embedder.model[0]
    twin = embedder.replica()
    assert twin._encoder[0] is twin.model[0] and twin.model[0] is not embedder.model[0]
    np.testing.assert_allclose(twin.encode(TEXTS, output="encoder"), pooled, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(TEXTS), model, atol=1e-6)  # the model output is unchanged


def test_an_unknown_output_lists_the_valid_ones(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"Unknown output 'head'; valid outputs: model \(.*\), encoder \("):
        TorchEmbedder(tiny_model_dir, device="cpu").encode(TEXTS, output="head")


def test_lora_adapter_folder_serves_both_outputs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A LoRA adapter folder (loaded through peft by the torch backend) with a head: the adapter starts as the
    identity (its B matrices are zero), so its encoder is the tiny model and its model output the headed one."""
    from omegaconf import OmegaConf
    from sentence_transformers import SentenceTransformer

    from arxiv_embeddings.backends.lora import add_lora, is_adapter_dir, save_adapter
    from arxiv_embeddings.train.head import HeadFit, add_head

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    add_lora(model, OmegaConf.create({"r": 4, "alpha": 8, "target_modules": ["query", "value"]}))
    weight, bias = head_weights(int(model.get_embedding_dimension()))
    add_head(model, HeadFit(weight, bias, losses=[0.0], papers=0, subjects=0, seconds=0.0))
    folder = save_adapter(model, tmp_path / "adapter", base=str(tiny_model_dir))
    assert is_adapter_dir(folder)
    pooled = TorchEmbedder(tiny_model_dir, device="cpu").encode(TEXTS)
    embedder = load_embedder(folder, backend="torch", device="cpu")
    np.testing.assert_allclose(embedder.encode(TEXTS, output="encoder"), pooled, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(TEXTS), _with_head(pooled), atol=1e-5)


# -------------------------------------------------------------------------------------------------- onnx
def test_onnx_outputs_match_torch_with_and_without_a_head(onnx_pair: tuple[Path, Path], tiny_model_dir: Path) -> None:
    tiny, headed = onnx_pair
    pooled = TorchEmbedder(tiny_model_dir, device="cpu").encode(TEXTS)
    plain = load_embedder(tiny, backend="onnx", variant="fp32")
    np.testing.assert_allclose(plain.encode(TEXTS, output="encoder"), plain.encode(TEXTS), atol=1e-6)
    np.testing.assert_allclose(plain.encode(TEXTS, output="encoder"), pooled, atol=1e-4)
    onnx = load_embedder(headed, backend="onnx", variant="fp32")
    encoder = onnx.encode(TEXTS, output="encoder", normalize=False)
    np.testing.assert_allclose(encoder, pooled, atol=1e-4)
    np.testing.assert_allclose(onnx.encode(TEXTS), _with_head(pooled), atol=1e-4)
    assert np.abs(onnx.encode(TEXTS) - encoder).max() > 0.1
    assert onnx.encode([], output="encoder").shape == (0, pooled.shape[1])
    with pytest.raises(ValueError, match=r"Unknown output 'pooled'; valid outputs: model"):
        onnx.encode(TEXTS, output="pooled")


# ------------------------------------------------------------------------------------------------ hosted
def test_a_hosted_model_has_only_the_model_output(tmp_path: Path) -> None:
    from arxiv_embeddings.backends.hosted import HostedEmbedder

    hosted = HostedEmbedder("http://127.0.0.1:9/v1", "text-embedding-3-small", cache=tmp_path / "c", api_key_env=None)
    with pytest.raises(ValueError, match=r"output='encoder': the hosted model 'text-embedding-3-small' has one"):
        hosted.encode(TEXTS, output="encoder")
    with pytest.raises(ValueError, match=r"Unknown output 'x'; valid outputs"):
        hosted.encode(TEXTS, output="x")
    assert hosted.requests == 0  # refused before any request


# --------------------------------------------------------------------------------------------- evaluation
def test_evaluation_scores_each_task_with_the_output_that_serves_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The evaluation embeds the papers (subject, graded) with the subject output and the titles and abstracts
    (search) with the search output, as the folder's tasks.json says; without the file, all with the model."""
    import pyarrow as pa
    from sentence_transformers import SentenceTransformer

    from arxiv_embeddings.config import compose
    from arxiv_embeddings.evaluation.data import EvalData
    from arxiv_embeddings.evaluation.features import embed

    folder = headed_copy(tiny_model_dir, tmp_path / "headed")
    titles = ["Graph neural networks", "Dark matter halos", "Sparse PCA", "Quantum error correction"]
    abstracts = ["We predict molecules.", "We simulate dwarf galaxies.", "We find sparse components.", "Codes."]
    table = pa.table({"title": titles, "abstract": abstracts, "primary_subject": ["cs.LG", "astro-ph", "stat.ML", "q"]})
    data = EvalData(test=table, train=table, train_path=tmp_path / "train.parquet")
    cfg = compose("evaluate", [f"paths.root_dir={tmp_path}", "evaluate.text=title", "evaluate.encode.batch_size=2"])
    reference = TorchEmbedder(folder, device="cpu")
    model = SentenceTransformer(str(folder), device="cpu")

    split = {"default": "subject", "tasks": {"subject": "model", "search": "encoder", "graded": "model"}}
    write_tasks(folder, split)
    features = embed(model, data, cfg, read_tasks(folder))
    np.testing.assert_allclose(features.titles, reference.encode(titles, output="encoder"), atol=1e-5)
    np.testing.assert_allclose(features.abstracts, reference.encode(abstracts, output="encoder"), atol=1e-5)
    # evaluate.text=title: the papers are titles too, but through the subject output (the head), not reused
    np.testing.assert_allclose(features.papers, reference.encode(titles), atol=1e-5)
    assert np.abs(features.papers - features.titles).max() > 0.1

    alike = embed(model, data, cfg, DEFAULT_TASKS)  # no tasks.json: every task on the whole model
    np.testing.assert_allclose(alike.titles, reference.encode(titles), atol=1e-5)
    assert alike.papers is alike.titles  # one output: the titles are not encoded twice
