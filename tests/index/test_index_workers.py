"""The index stage splits its embedding: worker processes on one machine (index.workers) and shares for several
machines (index.part=k/N, then a run that builds). Either way the index holds the vectors and finds the neighbours
of the unsharded build, row for row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.index import index_overrides

from arxiv_embeddings.config import ConfigError
from arxiv_embeddings.index import stage as index_stage
from arxiv_embeddings.index.search import PaperIndex


def _overrides(processed_root: Path, model: Path, *extra: str) -> list[str]:
    return index_overrides(processed_root, model, "index.type=flat", "index.eval.queries=50", "index.threads=2", *extra)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory: pytest.TempPathFactory, processed_root: Path, tiny_model_dir: Path, make_cfg):
    root = tmp_path_factory.mktemp("unsharded")
    return index_stage.run(make_cfg("index", root, _overrides(processed_root, tiny_model_dir)))


def _vectors(built: dict[str, Any]) -> tuple[PaperIndex, np.ndarray]:
    index = PaperIndex.load(built["dir"])
    return index, index.index.reconstruct_n(0, len(index))


def _same_index(built: dict[str, Any], unsharded: dict[str, Any]) -> None:
    index, vectors = _vectors(built)
    reference, expected = _vectors(unsharded)
    assert index.metadata.column("arxiv_id").to_pylist() == reference.metadata.column("arxiv_id").to_pylist()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    queries = expected[::17]
    got, want = index.search(queries, k=10), reference.search(queries, k=10)
    assert [[h.arxiv_id for h in row] for row in got] == [[h.arxiv_id for h in row] for row in want]


def test_two_worker_processes_build_the_unsharded_index(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path, make_cfg, unsharded: dict[str, Any]
) -> None:
    cfg = make_cfg("index", tmp_path, _overrides(processed_root, tiny_model_dir, "index.workers=2"))
    built = index_stage.run(cfg)
    count = built["manifest"]["count"]
    assert count > 2 * 256  # several shards, so both workers had some
    # two processes embedded them all in this run
    assert built["manifest"]["build"]["reused_papers"] == 0 and built["manifest"]["build"]["embed_workers"] == 2
    _same_index(built, unsharded)


def test_parts_embed_their_shards_and_a_last_run_builds_from_all_of_them(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path, make_cfg, unsharded: dict[str, Any]
) -> None:
    def run(*extra: str) -> dict[str, Any]:
        return index_stage.run(make_cfg("index", tmp_path, _overrides(processed_root, tiny_model_dir, *extra)))

    first = run("index.part=0/2")
    assert first["part"] == "0/2" and 0 < first["papers"] < unsharded["manifest"]["count"]
    cache = first["embeddings"][0]
    assert sorted(p.name for p in cache.glob("shard-*.npy"))[:2] == ["shard-00000.npy", "shard-00002.npy"]
    assert not (tmp_path / "indexes").exists() or not list((tmp_path / "indexes").glob("*/index.faiss"))
    second = run("index.part=1/2")
    assert first["papers"] + second["papers"] == unsharded["manifest"]["count"]
    built = run()
    assert built["manifest"]["build"]["reused_papers"] == unsharded["manifest"]["count"]  # nothing embedded again
    _same_index(built, unsharded)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("index.part=2/2", r"index.part: got '2/2'; expected 'k/N' with 0 <= k < N"),
        ("index.part=half", r"index.part: got 'half'"),
        ("index.workers=0", r"index.workers: got 0; expected an integer >= 1"),
    ],
)
def test_bad_sharding_settings_are_named(
    tmp_path: Path, processed_root: Path, tiny_model_dir: Path, make_cfg, override: str, message: str
) -> None:
    cfg = make_cfg("index", tmp_path, _overrides(processed_root, tiny_model_dir, override))
    with pytest.raises(ConfigError, match=message):
        index_stage.validate(cfg)


@pytest.mark.parametrize(
    ("settings", "bf16", "expected"),
    [
        # a GPU, nothing asked: torch in bf16 with large batches and no token cap, an export's CPU variant or not
        ({"index.encode.device": "cuda"}, True, ("torch", "bf16", "cuda", 256, None)),
        ({"index.encode.device": "cuda"}, False, ("torch", "fp16", "cuda", 256, None)),
        (
            {"index.encode.device": "cuda:1", "index.encode.gpu_batch_size": 512},
            True,
            ("torch", "bf16", "cuda:1", 512, None),
        ),
        # a backend or variant asked for is kept
        ({"index.encode.device": "cuda", "index.variant": "fp32"}, True, ("auto", "fp32", "cuda", 256, None)),
        ({"index.encode.device": "cuda", "index.backend": "onnx"}, True, ("onnx", None, "cuda", 256, None)),
        # a CPU: the settings as they are
        ({"index.encode.device": "cpu"}, True, ("auto", None, "cpu", 128, 2048)),
    ],
)
def test_on_a_gpu_the_index_encodes_in_bf16_with_large_batches(
    tmp_path: Path, make_cfg, monkeypatch: pytest.MonkeyPatch, settings: dict, bf16: bool, expected: tuple
) -> None:
    import torch

    from arxiv_embeddings.index.build import index_encoding

    # the GPU's answers (this machine may have none); what the index makes of them is what is under test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    how = index_encoding(make_cfg("index", tmp_path, [f"{k}={v}" for k, v in settings.items()]).index)
    assert (how.backend, how.variant, how.device, how.batch_size, how.max_batch_tokens) == expected


def test_without_a_gpu_the_index_settings_are_kept(tmp_path: Path, make_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from arxiv_embeddings.index.build import index_encoding

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    how = index_encoding(make_cfg("index", tmp_path, []).index)  # device null: auto, and there is no GPU
    assert (how.backend, how.variant, how.device, how.batch_size, how.max_batch_tokens) == (
        "auto",
        None,
        None,
        128,
        2048,
    )
