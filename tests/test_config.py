"""Every entry config composes, required values fail loudly, and validation names the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from arxiv_embeddings import pairs, preprocess
from arxiv_embeddings.config import CONFIG_DIR, ConfigError, check_missing, choose, compose

ENTRY_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")


def test_entry_configs_exist_for_the_data_stages() -> None:
    assert {"preprocess", "pairs"} <= set(ENTRY_CONFIGS)


@pytest.mark.parametrize("name", ENTRY_CONFIGS)
def test_every_entry_config_composes(name: str, tmp_path: Path) -> None:
    cfg = compose(name, [f"paths.root_dir={tmp_path}"])
    assert cfg.task_name == name
    assert str(cfg.paths.root_dir) == str(tmp_path)
    assert cfg.paths.processed_dir == f"{tmp_path}/data/processed"


@pytest.mark.parametrize(
    "group", sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in {"hydra", "experiment"})
)
def test_every_group_option_composes(group: str, tmp_path: Path) -> None:
    entry = next(n for n in ENTRY_CONFIGS if group in compose(n, [f"paths.root_dir={tmp_path}"]))
    for option in sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")):
        cfg = compose(entry, [f"paths.root_dir={tmp_path}", f"{group}={option}"])
        assert group in cfg


def test_files_source_requires_a_path(tmp_path: Path) -> None:
    cfg = compose("preprocess", [f"paths.root_dir={tmp_path}", "data=files"])
    with pytest.raises(ConfigError, match=r"data\.path"):
        check_missing(cfg)


def test_split_fractions_must_sum_to_one(tmp_path: Path) -> None:
    cfg = compose("preprocess", [f"paths.root_dir={tmp_path}", "preprocess.split.train=0.9"])
    with pytest.raises(ConfigError, match=r"preprocess\.split.*sum to 1"):
        preprocess.validate(cfg)


def test_unknown_data_source_lists_valid_ones(tmp_path: Path) -> None:
    cfg = compose("preprocess", [f"paths.root_dir={tmp_path}", "data.source=kaggle"])
    with pytest.raises(ConfigError, match="files, hf, sample"):
        preprocess.validate(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("pairs.type=triplets", "pairs.type"),
        ("pairs.text=body", "pairs.text"),
        ("pairs.sampling=random", "pairs.sampling"),
        ("pairs.num_train=0", "pairs.num_train"),
    ],
)
def test_pairs_validation_names_the_key(override: str, key: str, tmp_path: Path) -> None:
    cfg = compose("pairs", [f"paths.root_dir={tmp_path}", override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        pairs.validate(cfg)


def test_negatives_only_for_pair_types_with_a_negative_column(tmp_path: Path) -> None:
    cfg = compose("pairs", [f"paths.root_dir={tmp_path}", "pairs=graded", "pairs.negatives=true"])
    with pytest.raises(ConfigError, match="anchor_positive, title_abstract"):
        pairs.validate(cfg)


def test_choose_lists_the_valid_names() -> None:
    assert choose("loss", "b", {"a": 1, "b": 2}) == 2
    with pytest.raises(ConfigError, match=r"loss='c' is not known; valid values: a, b\."):
        choose("loss", "c", {"b": 2, "a": 1})


@pytest.mark.parametrize("stage", ["preprocess", "pairs", "label", "train", "evaluate", "baseline", "export", "index"])
def test_each_entry_config_names_what_its_stage_reads(stage: str) -> None:
    """A reader who opens configs/<stage>.yaml finds the sections the stage reads: its 'Reads' line is the stage's
    fingerprint keys (StageSpec.config_keys), so neither can change without the other."""
    import importlib

    module = "train.stage" if stage == "train" else f"{stage}.stage" if stage in ("label", "export", "index") else stage
    spec = importlib.import_module(f"arxiv_embeddings.{module}").SPEC
    lines = [line for line in (CONFIG_DIR / f"{stage}.yaml").read_text().splitlines() if line.startswith("# Reads")]
    assert len(lines) == 1, f"configs/{stage}.yaml has no single '# Reads (...): ...' line"
    named = lines[0].split(":", 1)[1]
    assert [k.strip() for k in named.split(",")] == list(spec.config_keys)
