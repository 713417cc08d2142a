"""Length-aware batches: texts grouped by token length and capped by count and by padded tokens, the same vectors
whatever the batches, on the torch and the ONNX embedders and in the evaluation's encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from arxiv_embeddings.backends.batches import check_max_batch_tokens, token_batches
from arxiv_embeddings.backends.torch_embedder import TorchEmbedder
from arxiv_embeddings.config import ConfigError, compose

#: Titles and abstracts of very different lengths, so that a token cap changes the batches.
TEXTS = [
    "Sparse PCA",
    "Dark matter halos in dwarf galaxies\n" + "We simulate the rotation curves of twelve dwarf galaxies. " * 6,
    "Graph neural networks for molecular property prediction",
    "Quantum error correction\n" + "Surface codes protect logical qubits against local noise. " * 4,
    "A note",
    "Lattice QCD at finite density\n" + "We compute the equation of state of dense quark matter. " * 8,
    "Reinforcement learning for robot grasping",
]


def test_batches_sort_by_length_and_respect_both_caps() -> None:
    lengths = [5, 40, 12, 30, 3, 64, 12]
    batches = token_batches(lengths, batch_size=3)
    assert [b.tolist() for b in batches] == [[5, 1, 3], [2, 6, 0], [4]]  # longest first, ties in order
    capped = token_batches(lengths, batch_size=3, max_tokens=64)
    assert sorted(i for b in capped for i in b) == list(range(len(lengths)))  # every row once
    for batch in capped:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded <= 64 or len(batch) == 1, (batch, padded)
    assert [b.tolist() for b in capped][:3] == [[5], [1], [3, 2]]  # 64 alone, 40 alone, 30 + 12 = 60 padded
    assert [b.tolist() for b in token_batches([100, 2], batch_size=8, max_tokens=10)] == [[0], [1]]
    assert token_batches([], batch_size=4) == []


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "many"])
def test_a_bad_token_cap_names_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match=r"serve.max_batch_tokens must be a positive number of tokens .* got"):
        check_max_batch_tokens(bad, "serve.max_batch_tokens")  # type: ignore[arg-type]
    assert check_max_batch_tokens(None) is None and check_max_batch_tokens(512) == 512


def test_torch_embedder_with_a_token_cap_gives_the_same_vectors_in_capped_calls(tiny_model_dir: Path) -> None:
    plain = TorchEmbedder(tiny_model_dir, device="cpu")
    capped = TorchEmbedder(tiny_model_dir, device="cpu", max_batch_tokens=96)
    lengths = capped.token_counts(TEXTS)
    assert lengths.max() > 48 and lengths.min() < 8  # the texts differ in length
    calls: list[list[str]] = []
    encode = capped.model.encode

    def spy(texts, **kwargs):
        calls.append(list(texts))
        return encode(texts, **kwargs)

    capped.model.encode = spy
    np.testing.assert_allclose(capped.encode(TEXTS, batch_size=4), plain.encode(TEXTS, batch_size=4), atol=1e-5)
    assert sorted(t for call in calls for t in call) == sorted(TEXTS) and len(calls) > 2
    for call in calls:
        padded = max(capped.token_counts(call)) * len(call)
        assert padded <= 96 or len(call) == 1, (len(call), padded)


def test_onnx_embedder_with_a_token_cap_gives_the_same_vectors_in_capped_calls(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from arxiv_embeddings.backends.onnx_embedder import load_onnx_embedder
    from arxiv_embeddings.export.build import build_onnx

    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (folder / "onnx").mkdir()
    build_onnx(folder, folder / "onnx", levels=[], arch=None)
    reference = TorchEmbedder(tiny_model_dir, device="cpu").encode(TEXTS)
    plain = load_onnx_embedder(folder, variant="fp32", threads=1)
    capped = load_onnx_embedder(folder, variant="fp32", threads=1, max_batch_tokens=96)
    shapes: list[tuple[int, int]] = []
    run = capped.session.run

    class Spy:
        def run(self, names, feed):
            shapes.append(feed["input_ids"].shape)
            return run(names, feed)

    capped.session = Spy()
    np.testing.assert_allclose(plain.encode(TEXTS, batch_size=4), reference, atol=1e-4)
    np.testing.assert_allclose(capped.encode(TEXTS, batch_size=4), reference, atol=1e-4)
    assert sum(rows for rows, _ in shapes) == len(TEXTS) and len(shapes) > 2
    assert all(rows * width <= 96 or rows == 1 for rows, width in shapes), shapes
    # the token counts are the model's own (special tokens included, truncated at max_seq_length)
    np.testing.assert_array_equal(plain.token_counts(TEXTS), TorchEmbedder(tiny_model_dir).token_counts(TEXTS))


def test_the_evaluation_encoder_with_a_token_cap_gives_the_same_vectors(tiny_model_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from arxiv_embeddings.evaluation.features import encode_texts

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    plain = encode_texts(model, TEXTS, 4, "texts")
    calls: list[list[str]] = []
    encode = model.encode

    def spy(texts, **kwargs):
        calls.append(list(texts))
        return encode(texts, **kwargs)

    model.encode = spy
    np.testing.assert_allclose(encode_texts(model, TEXTS, 4, "texts", max_tokens=96), plain, atol=1e-5)
    counts = TorchEmbedder(tiny_model_dir, device="cpu")
    assert sorted(t for call in calls for t in call) == sorted(TEXTS) and len(calls) > 2
    assert all(max(counts.token_counts(call)) * len(call) <= 96 or len(call) == 1 for call in calls)


def test_the_api_loads_its_model_with_the_token_cap(tiny_model_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from helpers.api import RecordingLoader, clear_serving_env, make_settings, wait_ready

    from arxiv_embeddings.api.app import create_app

    mp = pytest.MonkeyPatch()
    clear_serving_env(mp)
    try:
        loader = RecordingLoader()
        app = create_app(make_settings(tmp_path, tiny_model_dir, "serve.max_batch_tokens=96"), load_embedder=loader)
        with TestClient(app) as client:
            wait_ready(client)
            assert loader.embedder.inner.max_batch_tokens == 96
            body = client.post("/v1/embeddings", json={"input": TEXTS, "model": tiny_model_dir.name}).json()
            assert len(body["data"]) == len(TEXTS) and body["usage"]["prompt_tokens"] > len(TEXTS)
    finally:
        mp.undo()


@pytest.mark.parametrize(
    ("config", "key"),
    [("index", "index.encode.max_batch_tokens"), ("evaluate", "evaluate.encode.max_batch_tokens")],
)
def test_a_bad_token_cap_in_a_stage_config_is_named(tmp_path: Path, config: str, key: str) -> None:
    from arxiv_embeddings.evaluate import validate as validate_evaluate
    from arxiv_embeddings.index.stage import validate as validate_index

    cfg = compose(config, [f"paths.root_dir={tmp_path}", f"{key}=0"])
    with pytest.raises(ConfigError, match=rf"{key}: got 0; expected an integer >= 1, or null"):
        (validate_index if config == "index" else validate_evaluate)(cfg)
