"""Multi-task training (mix): the pairs stage builds every task's pairs, each task is checked against its loss
before training, the batches of a mix are reproducible, and a run trains on every task."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.train import FAST

from arxiv_embeddings import pairs
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.io import read_json, read_parquet
from arxiv_embeddings.train import stage as train_stage

SEARCH = "mix.tasks.search"


@pytest.fixture
def root(tmp_path: Path, processed_root: Path) -> Path:
    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")
    return tmp_path


def _pairs(root: Path, mix: str, *overrides: str) -> dict:
    """Pairs of ``mix`` on the tiny slice: 64 main-task pairs (and 48 search pairs when the mix has that task)."""
    search = [f"{SEARCH}.num_train=48"] if mix != "none" else []
    base = [f"paths.root_dir={root}", "pairs.num_train=64", "pairs.num_eval=16", f"mix={mix}", *search]
    return pairs.run(compose("pairs", [*base, *overrides]))


def _train_cfg(root: Path, model: Path, *overrides: str):
    return compose(
        "train",
        [f"paths.root_dir={root}", f"model.name={model}", "run_name=t", *FAST, "mix=subject_search", *overrides],
    )


def test_pairs_stage_builds_every_task_of_the_mix(root: Path) -> None:
    result = _pairs(root, "subject_search_graded", "mix.tasks.graded.num_train=32")
    d = root / "data" / "pairs"
    manifest = read_json(d / "manifest.json")
    assert manifest["type"] == "anchor_positive" and manifest["main"] == "subject"
    assert manifest["tasks"] == {
        "search": {"type": "title_abstract", "dir": "search"},
        "graded": {"type": "graded", "dir": "graded"},
    }
    assert result["counts"] == {
        "train": 64, "eval": 16, "search/train": 48, "search/eval": 16, "graded/train": 32, "graded/eval": 16
    }  # fmt: skip
    search = read_parquet(d / "search" / "train.parquet").to_pandas()
    meta = read_parquet(d / "search" / "train_meta.parquet").to_pandas()
    papers = read_parquet(root / "data" / "processed" / "train.parquet").to_pandas().set_index("arxiv_id")
    # search pairs: a paper's title, then that same paper's abstract
    assert (meta.a_id == meta.b_id).all()
    assert list(search.anchor) == list(papers.loc[meta.a_id, "title"])
    assert list(search.positive) == list(papers.loc[meta.a_id, "abstract"])
    graded = read_parquet(d / "graded" / "train.parquet")
    assert graded.column_names == ["sentence1", "sentence2", "score"]
    # the main task's pairs are the same bytes as without the mix: adding tasks does not move them
    main_bytes = (d / "train.parquet").read_bytes()
    _pairs(root, "none")
    assert (d / "train.parquet").read_bytes() == main_bytes
    assert not (d / "search").exists()


def test_a_task_with_the_wrong_loss_fails_before_training(root: Path, tiny_model_dir: Path) -> None:
    _pairs(root, "subject_search")
    with pytest.raises(
        ConfigError,
        match=r"mix\.tasks\.search: loss CoSENTLoss does not fit its pairs 'title_abstract'.*MultipleNegativesRankingLoss",
    ):
        train_stage.validate(_train_cfg(root, tiny_model_dir, f"{SEARCH}.loss.name=CoSENTLoss"))
    with pytest.raises(
        ConfigError,
        match=r"mix\.tasks\.graded: loss MultipleNegativesRankingLoss does not fit its pairs 'graded'.*CoSENTLoss",
    ):
        train_stage.validate(
            _train_cfg(
                root,
                tiny_model_dir,
                "mix=subject_search_graded",
                "mix.tasks.graded.loss.name=MultipleNegativesRankingLoss",
            )
        )
    # mix=none under an experiment that sets the search task's size: the task's remains name the way to drop it
    with pytest.raises(ConfigError, match=r"mix\.tasks\.search has no pair type .*pass mix\.tasks\.search=null"):
        train_stage.validate(_train_cfg(root, tiny_model_dir, "mix=none", f"+{SEARCH}.num_train=512"))
    with pytest.raises(ConfigError, match=r"mix\.tasks\.search\.pairs='titles' is not a pair type"):
        train_stage.validate(_train_cfg(root, tiny_model_dir, f"{SEARCH}.pairs=titles"))
    with pytest.raises(ConfigError, match=r"batch_sampler=subject_groups is for title_abstract pairs, not graded"):
        train_stage.validate(
            _train_cfg(
                root, tiny_model_dir, "mix=subject_search_graded", "+mix.tasks.graded.batch_sampler=subject_groups"
            )
        )
    with pytest.raises(ConfigError, match=r"mix\.tasks\.search: unknown key\(s\) weight"):
        train_stage.validate(_train_cfg(root, tiny_model_dir, f"+{SEARCH}.weight=2"))


def test_a_task_without_pairs_fails_before_training_with_the_command(root: Path, tiny_model_dir: Path) -> None:
    _pairs(root, "subject_search")  # no graded pairs built
    cfg = _train_cfg(root, tiny_model_dir, "mix=subject_search_graded")
    with pytest.raises(
        ConfigError, match=r"mix\.tasks\.graded: no pairs for this task.*holds the tasks search.*uv run inv pairs"
    ):
        train_stage.run(cfg)
    assert not (root / "models" / "t").exists()


def _batches(root: Path, model: Path, seed: int) -> list[tuple[str, tuple[str, ...]]]:
    """The (task, first texts) of every training batch the trainer would draw for this mix."""
    from arxiv_embeddings.backends.loading import load_model
    from arxiv_embeddings.train.sets import training_sets
    from arxiv_embeddings.train.trainer import trainer_class, training_args

    cfg = _train_cfg(root, model, f"seed={seed}", "trainer.max_steps=-1")
    sets = training_sets(cfg)
    st = load_model(str(model), device="cpu")
    train_ds, _ = sets.datasets()
    args = training_args(cfg, root / "ckpt", "fp32", "cpu", has_eval=False)
    trainer = trainer_class()(model=st, args=args, train_dataset=train_ds, loss=sets.losses(st))
    trainer.train_samplers = sets.samplers()
    out = []
    for batch in trainer.get_train_dataloader():
        out.append((batch["dataset_name"], tuple(batch["anchor_input_ids"][:, 1].tolist())))
    return out


def test_the_mix_is_reproducible_and_draws_every_task(root: Path, tiny_model_dir: Path) -> None:
    _pairs(root, "subject_search")
    first, again = _batches(root, tiny_model_dir, 42), _batches(root, tiny_model_dir, 42)
    assert first == again
    tasks = [name for name, _ in first]
    # 64 subject pairs and 48 search pairs in batches of 8: 8 + 6 batches, proportional sampling takes them all
    assert sorted(set(tasks)) == ["search", "subject"]
    assert tasks.count("subject") == 8 and tasks.count("search") == 6
    assert _batches(root, tiny_model_dir, 7) != first


def test_subject_groups_put_several_papers_of_one_subject_in_a_search_batch(root: Path) -> None:
    from arxiv_embeddings.train.sets import training_sets

    _pairs(root, "subject_search", f"{SEARCH}.num_train=64")
    cfg = compose("train", [f"paths.root_dir={root}", "mix=subject_search", "train.papers_per_subject=4", *FAST])
    search = next(s for s in training_sets(cfg).sets if s.task == "search")
    cls, kwargs = training_sets(cfg).samplers()[1]
    sampler = cls(list(range(64)), 8, False, seed=42, **kwargs)
    subjects = read_parquet(search.folder / "train_meta.parquet").column("a_subject").to_numpy(zero_copy_only=False)
    grouped = [np.unique(subjects[b], return_counts=True)[1] for b in sampler]
    # most batches are 2 subjects x 4 papers (the leftovers of small subjects fill plain batches at the end)
    assert sum(1 for counts in grouped if list(counts) == [4, 4]) >= len(grouped) // 2


def test_a_mix_trains_every_task_and_records_them(root: Path, tiny_model_dir: Path) -> None:
    _pairs(root, "subject_search")
    result = train_stage.run(_train_cfg(root, tiny_model_dir))
    summary = read_json(Path(result["model"]) / "train_summary.json")
    assert summary["pair_type"] == "anchor_positive"
    assert summary["tasks"]["search"]["pairs"] == "title_abstract"
    assert summary["tasks"]["search"]["loss"]["name"] == "MultipleNegativesRankingLoss"
    assert summary["global_step"] == 3
    assert np.isfinite(summary["train"]["train_loss"])
    # the evaluation after training covers both tasks
    assert 0.0 <= result["test"]["test_cosine_precision@10"] <= 1.0
    assert 0.0 <= result["test"]["test_title_abstract_cosine_recall@1"] <= 1.0
