"""train: each pair type trains with its loss, the subject sampler, resume, errors, the real MiniLM, and DDP."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers.train import FAST
from transformers import TrainerCallback

from arxiv_embeddings import pairs
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.io import read_json
from arxiv_embeddings.train import checkpoints
from arxiv_embeddings.train import stage as train_stage
from arxiv_embeddings.train.checkpoints import CheckpointUploader, upload_checkpoint
from arxiv_embeddings.train.model import freeze_lower_layers
from arxiv_embeddings.train.samplers import SubjectBatchSampler

REPO = Path(__file__).resolve().parents[2]


def _root_with_pairs(tmp_path: Path, processed_root: Path, *pair_overrides: str) -> Path:
    shutil.copytree(processed_root / "data" / "processed", tmp_path / "data" / "processed")
    pairs.run(
        compose("pairs", [f"paths.root_dir={tmp_path}", "pairs.num_train=64", "pairs.num_eval=16", *pair_overrides])
    )
    return tmp_path


def _train_cfg(root: Path, model: Path | str, *overrides: str):
    return compose("train", [f"paths.root_dir={root}", f"model.name={model}", "run_name=t", *FAST, *overrides])


@pytest.mark.parametrize(
    ("pair_override", "loss"),
    [
        ("pairs=anchor_positive", "loss=mnrl"),
        ("pairs=anchor_positive", "loss=cached_mnrl"),
        ("pairs=contrastive", "loss=online_contrastive"),
        ("pairs=contrastive", "loss=contrastive"),
        ("pairs=graded", "loss=cosent"),
        ("pairs=graded", "loss=cosine"),
        ("pairs=title_abstract", "loss=mnrl"),
        ("pairs=labelled", "loss=supcon"),
        ("pairs=labelled", "loss=batch_all_triplet"),
        ("pairs=labelled", "loss=batch_hard_soft_margin_triplet"),
    ],
)
def test_tiny_model_trains_on_each_pair_type(tmp_path, processed_root, tiny_model_dir, pair_override, loss) -> None:
    root = _root_with_pairs(tmp_path, processed_root, pair_override)
    extra = ["loss.mini_batch_size=4"] if loss == "loss=cached_mnrl" else []
    result = train_stage.run(_train_cfg(root, tiny_model_dir, loss, *extra))
    final = Path(result["model"])
    summary = read_json(final / "train_summary.json")
    assert summary["global_step"] == 3
    assert np.isfinite(summary["train"]["train_loss"])
    assert 0.0 <= result["test"]["test_cosine_precision@10"] <= 1.0
    assert (
        (final / "modules.json").exists() and (final / "README.md").exists() and (final / "train_config.yaml").exists()
    )

    from sentence_transformers import SentenceTransformer

    reloaded = SentenceTransformer(str(final), device="cpu")
    emb = reloaded.encode(["a paper about black holes"], normalize_embeddings=True)
    assert emb.shape == (1, 32)


def test_matryoshka_wrapper_trains(tmp_path, processed_root, tiny_model_dir) -> None:
    root = _root_with_pairs(tmp_path, processed_root)
    result = train_stage.run(_train_cfg(root, tiny_model_dir, "loss=matryoshka", "loss.dims=[32,16,8]"))
    assert "MatryoshkaLoss" in (Path(result["model"]) / "README.md").read_text()


def test_an_export_beside_the_model_keeps_the_run_up_to_date(tmp_path, processed_root, tiny_model_dir) -> None:
    from arxiv_embeddings.runner import execute, is_up_to_date

    root = _root_with_pairs(tmp_path, processed_root)
    cfg = _train_cfg(root, tiny_model_dir)
    final = Path(execute(train_stage.SPEC, cfg)["model"])
    assert is_up_to_date(train_stage.SPEC, cfg)
    # What `inv export` adds next to the model: ONNX files and its report.
    (final / "onnx").mkdir()
    (final / "onnx" / "model.onnx").write_bytes(b"onnx graph")
    (final / "export_report.json").write_text("{}")
    assert is_up_to_date(train_stage.SPEC, cfg)
    # A change to the model's own files does make it stale.
    with (final / "config.json").open("a") as f:
        f.write(" ")
    assert not is_up_to_date(train_stage.SPEC, cfg)


def test_a_changed_split_the_evaluators_read_makes_the_run_stale(tmp_path: Path) -> None:
    """The stage declares the processed splits it reads: eval (train.eval_papers) and test (train.test_papers)."""
    from arxiv_embeddings.io import tree_sha256, write_json
    from arxiv_embeddings.runner import fingerprint, is_up_to_date, stamp_path

    processed = tmp_path / "data" / "processed"
    processed.mkdir(parents=True)
    output = tmp_path / "models" / "t" / "final" / "model.safetensors"
    output.parent.mkdir(parents=True)
    output.write_bytes(b"weights")

    def cfg_with(*overrides: str):
        for split in ("train", "eval", "test"):
            (processed / f"{split}.parquet").write_bytes(split.encode())
        cfg = compose("train", [f"paths.root_dir={tmp_path}", "run_name=t", *overrides])
        write_json(  # the stamp of a successful run with these inputs
            stamp_path(train_stage.SPEC, cfg),
            {
                "fingerprint": fingerprint(cfg, train_stage.SPEC.inputs(cfg), train_stage.SPEC.config_keys),
                "outputs": {str(output): tree_sha256(output)},
            },
        )
        assert is_up_to_date(train_stage.SPEC, cfg)
        return cfg

    for split in ("eval", "test"):
        cfg = cfg_with("train.eval_papers=40", "train.test_papers=40")
        (processed / f"{split}.parquet").write_bytes(b"other papers")
        assert not is_up_to_date(train_stage.SPEC, cfg), split
    # With no papers scored, the split is not read, and a change to it leaves the run as it is.
    for split, override in (("eval", "train.eval_papers=0"), ("test", "train.test_papers=0")):
        cfg = cfg_with(override)
        (processed / f"{split}.parquet").write_bytes(b"other papers")
        assert is_up_to_date(train_stage.SPEC, cfg), split
    # Without the head the train split is not read; with it, it is.
    cfg = cfg_with("train.head.enabled=false")
    (processed / "train.parquet").write_bytes(b"other papers")
    assert is_up_to_date(train_stage.SPEC, cfg)
    cfg = cfg_with()  # the head is on by default
    (processed / "train.parquet").write_bytes(b"other papers")
    assert not is_up_to_date(train_stage.SPEC, cfg)


def test_loss_and_pair_type_must_agree(tmp_path, processed_root, tiny_model_dir) -> None:
    root = _root_with_pairs(tmp_path, processed_root, "pairs=graded")
    with pytest.raises(
        ConfigError, match=r"MultipleNegativesRankingLoss does not fit pairs of type 'graded'.*CoSENTLoss"
    ):
        train_stage.run(_train_cfg(root, tiny_model_dir, "loss=mnrl"))


def test_label_aware_losses_need_labelled_rows_and_fitting_batches(tmp_path, processed_root, tiny_model_dir) -> None:
    pairs_root = _root_with_pairs(tmp_path / "pairs", processed_root, "pairs=anchor_positive")
    with pytest.raises(ConfigError, match=r"SupervisedContrastiveLoss does not fit pairs of type 'anchor_positive'"):
        train_stage.run(_train_cfg(pairs_root, tiny_model_dir, "loss=supcon"))
    rows_root = _root_with_pairs(tmp_path / "rows", processed_root, "pairs=labelled")
    with pytest.raises(
        ConfigError, match=r"MultipleNegativesRankingLoss does not fit pairs of type 'labelled'.*Supervised"
    ):
        train_stage.run(_train_cfg(rows_root, tiny_model_dir, "loss=mnrl"))
    with pytest.raises(ConfigError, match=r"train\.papers_per_subject.*got 3.*per_device_train_batch_size=8"):
        train_stage.run(_train_cfg(rows_root, tiny_model_dir, "loss=supcon", "train.papers_per_subject=3"))
    with pytest.raises(ConfigError, match=r"train\.batch_sampler=category does not apply to labelled rows"):
        train_stage.run(_train_cfg(rows_root, tiny_model_dir, "loss=supcon", "train.batch_sampler=category"))


def test_label_group_sampler_gives_each_subject_k_papers_per_batch() -> None:
    from arxiv_embeddings.train.samplers import LabelGroupBatchSampler

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 2000)
    sampler = LabelGroupBatchSampler(list(range(2000)), batch_size=32, drop_last=False, labels=labels, per_label=4)
    batches = sampler.batches(0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(2000))  # every row once per epoch
    grouped = [b for b in batches if len(b) == 32 and sorted(Counter(labels[b].tolist()).values()) == [4] * 8]
    assert len(grouped) == sampler.stats["grouped_batches"] and len(grouped) / len(batches) > 0.9
    assert [
        b.tolist()
        for b in LabelGroupBatchSampler(
            list(range(2000)), batch_size=32, drop_last=False, labels=labels, per_label=4
        ).batches(0)
    ] == [b.tolist() for b in batches]  # same seed, same batches
    assert [b.tolist() for b in sampler.batches(1)] != [b.tolist() for b in batches]
    assert len(sampler) == len(batches)
    with pytest.raises(ValueError, match="papers_per_subject=3 must be >= 2 and divide the batch size 32"):
        LabelGroupBatchSampler(list(range(10)), batch_size=32, drop_last=False, labels=labels[:10], per_label=3)


def test_supervised_contrastive_loss_is_the_multi_positive_infonce() -> None:
    import torch

    from arxiv_embeddings.train.losses import SupervisedContrastiveLoss

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(6, 5))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 1, 2])  # label 2 alone: a negative for the others, not an anchor
    t = 0.1
    expected = []
    for i in range(6):
        others = [j for j in range(6) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        log_denominator = np.log(np.sum(np.exp(emb[i] @ emb[others].T / t)))
        expected.append(-np.mean([emb[i] @ emb[p] / t - log_denominator for p in positives]))
    loss = SupervisedContrastiveLoss(model=None, temperature=t)
    got = loss.from_embeddings(torch.tensor(emb, dtype=torch.float32), torch.tensor(labels))
    assert float(got) == pytest.approx(float(np.mean(expected)), rel=1e-5)
    # Closer positives, lower loss; no label twice in a batch, zero loss (and a gradient of zeros, not NaN).
    tighter = emb.copy()
    tighter[1], tighter[3], tighter[4] = emb[0], emb[2], emb[2]
    assert float(loss.from_embeddings(torch.tensor(tighter, dtype=torch.float32), torch.tensor(labels))) < float(got)
    x = torch.tensor(emb, dtype=torch.float32, requires_grad=True)
    alone = loss.from_embeddings(x, torch.arange(6))
    alone.backward()
    assert float(alone) == 0.0 and torch.isfinite(x.grad).all()


def test_unknown_loss_lists_valid_names(tmp_path, tiny_model_dir) -> None:
    with pytest.raises(
        ConfigError, match="valid values: BatchAllTripletLoss, BatchHardSoftMarginTripletLoss, CachedMultipleNegatives"
    ):
        train_stage.validate(_train_cfg(tmp_path, tiny_model_dir, "loss.name=TripletLoss"))


def test_missing_pairs_name_the_command(tmp_path, tiny_model_dir) -> None:
    with pytest.raises(FileNotFoundError, match="uv run inv pairs"):
        train_stage.run(_train_cfg(tmp_path, tiny_model_dir))


def test_a_model_path_that_is_not_a_model_says_what_was_expected(tmp_path, processed_root) -> None:
    from arxiv_embeddings.layout import ModelNotFoundError

    root = _root_with_pairs(tmp_path, processed_root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"expected a folder with modules\.json"):
        train_stage.run(_train_cfg(root, tmp_path / "empty"))


class _Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == 3:
            raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")


def test_resume_continues_an_interrupted_run_from_its_checkpoint(tmp_path, processed_root, tiny_model_dir) -> None:
    root = _root_with_pairs(tmp_path, processed_root)
    overrides = ["trainer.max_steps=5", "trainer.save_steps=2", "trainer.eval_steps=100"]
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(_train_cfg(root, tiny_model_dir, *overrides), callbacks=[_Crash()])
    ckpts = root / "models" / "t" / "checkpoints"
    assert (ckpts / "checkpoint-2").is_dir() and not (root / "models" / "t" / "final").exists()

    seen: list[int] = []

    class _Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(state.global_step)

    result = train_stage.run(_train_cfg(root, tiny_model_dir, *overrides), callbacks=[_Record()])
    assert seen[0] == 2  # picked up after the checkpoint, not from step 0
    assert result["summary"]["global_step"] == 5
    assert read_json(ckpts / "run.json")["completed"] is True


def test_subject_sampler_keeps_one_pair_per_subject_per_batch() -> None:
    rng = np.random.default_rng(0)
    subjects = rng.choice([f"s{i}" for i in range(40)], size=2000)
    sampler = SubjectBatchSampler(list(range(2000)), batch_size=32, drop_last=False, subjects=subjects, seed=1)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(2000))  # every pair exactly once
    assert len(batches) == len(sampler)
    unique = [len(set(subjects[b])) == len(b) for b in batches]
    assert sum(unique) / len(batches) > 0.9
    assert sampler.stats["subject_unique_fraction"] == pytest.approx(sum(unique) / len(batches), abs=0.02)
    assert [list(b) for b in sampler.batches(0)] == [list(b) for b in sampler.batches(0)]
    assert [list(b) for b in sampler.batches(0)] != [list(b) for b in sampler.batches(1)]
    # a plain random batcher of the same data puts same-subject pairs together far more often
    plain = [subjects[rng.permutation(2000)[:32]] for _ in range(50)]
    assert sum(len(set(b)) == 32 for b in plain) < 5


@pytest.mark.slow
def test_real_minilm_trains_a_handful_of_steps(tmp_path, processed_root) -> None:
    root = _root_with_pairs(tmp_path, processed_root)
    result = train_stage.run(
        _train_cfg(root, "sentence-transformers/all-MiniLM-L6-v2", "trainer.max_steps=4", "train.test_papers=200")
    )
    summary = result["summary"]
    assert summary["global_step"] == 4
    assert summary["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # the pretrained model already ranks a same-subject paper first most of the time: a random ranking over the
    # 10 subjects of the slice would give MRR@10 near 0.3
    assert result["test"]["test_cosine_mrr@10"] > 0.6
    # Trained at train.max_seq_length (32 here), saved at the base model's 256 tokens: reloaded, and through the
    # tokenizer file the ONNX embedder reads, it is served at the length it is compared with zero-shot at.
    assert summary["train_max_seq_length"] == 32 and summary["max_seq_length"] == 256
    from sentence_transformers import SentenceTransformer

    reloaded = SentenceTransformer(str(result["model"]), device="cpu")
    assert reloaded.max_seq_length == 256
    long_text = "word " * 400
    assert len(reloaded.tokenize([long_text])["input_ids"][0]) == 256
    from arxiv_embeddings.backends.onnx_embedder import read_pipeline

    assert read_pipeline(Path(result["model"])).max_seq_length == 256


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path, processed_root, tiny_model_dir) -> None:
    root = _root_with_pairs(tmp_path, processed_root)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29533",
        "-m",
        "arxiv_embeddings.train",
        f"paths.root_dir={root}",
        f"model.name={tiny_model_dir}",
        "run_name=ddp",
        *(o for o in FAST if not o.startswith("trainer.max_steps")),
        "trainer.max_steps=4",
        "train.batch_sampler=random",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    summary = read_json(root / "models" / "ddp" / "final" / "train_summary.json")
    assert summary["global_step"] == 4
    assert summary["world_size"] == 2


def test_freeze_lower_layers_freezes_embeddings_and_the_lowest_layers(tiny_model_dir) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    backbone = model[0].auto_model
    assert "1/2 layers frozen" in freeze_lower_layers(model, 1)
    assert not any(p.requires_grad for p in backbone.embeddings.parameters())
    assert not any(p.requires_grad for p in backbone.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in backbone.encoder.layer[1].parameters())
    with pytest.raises(ConfigError, match="would freeze all 2 layers"):
        freeze_lower_layers(model, 2)


def _checkpoint(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    (folder / "sub").mkdir(parents=True)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (folder / "sub" / "weights.bin").write_bytes(bytes([step]) * 4096)
    return folder


def test_checkpoint_uploads_run_in_the_background_and_keep_the_newest(tmp_path: Path, monkeypatch) -> None:
    """The upload does not block the save; a checkpoint the trainer deletes meanwhile still arrives whole; one
    waiting behind a running upload is replaced by a newer one; wait() leaves nothing in flight."""
    import threading

    local, remote = tmp_path / "ckpts", tmp_path / "bucket" / "checkpoints"
    gate, started = threading.Event(), threading.Event()
    real_upload = upload_checkpoint

    def gated(staged: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        started.set()
        assert gate.wait(30)
        return real_upload(staged, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "upload_checkpoint", gated)  # where the uploader looks it up
    uploader = CheckpointUploader(local, remote, "fp", keep=2)
    first = _checkpoint(local, 1)
    uploader.submit(first)
    assert started.wait(30)  # the upload of checkpoint-1 is under way, held by the gate ...
    shutil.rmtree(first)  # ... while the trainer rotates its folder away
    uploader.submit(_checkpoint(local, 2))  # returns at once: queued behind checkpoint-1
    uploader.submit(_checkpoint(local, 3))  # replaces checkpoint-2 in the queue
    assert uploader.uploaded == []
    gate.set()
    uploader.wait()
    assert uploader.uploaded == ["checkpoint-1", "checkpoint-3"] and uploader.errors == []
    assert (remote / "checkpoint-1" / "sub" / "weights.bin").read_bytes() == bytes([1]) * 4096
    assert (remote / "checkpoint-3" / "trainer_state.json").read_text() == '{"global_step": 3}'
    assert not (remote / "checkpoint-2").exists()
    assert read_json(remote / "run.json")["checkpoints"] == ["checkpoint-1", "checkpoint-3"]
    assert not (local / ".uploading").exists() and (local / "checkpoint-3").is_dir()


def test_a_failed_checkpoint_upload_is_logged_and_training_goes_on(tmp_path: Path) -> None:
    local = tmp_path / "ckpts"
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the bucket folder should be")
    uploader = CheckpointUploader(local, blocker / "checkpoints", "fp", keep=None)
    uploader.submit(_checkpoint(local, 5))
    uploader.wait()
    assert uploader.uploaded == [] and len(uploader.errors) == 1 and uploader.errors[0].startswith("checkpoint-5: ")
    assert (local / "checkpoint-5" / "sub" / "weights.bin").exists()  # still on local disk


def test_a_dropped_task_fingerprints_as_no_task(tmp_path: Path) -> None:
    """mix.tasks.<task>=null drops the task, so the stage sees the same config as without it; a real task differs."""
    from arxiv_embeddings.runner import fingerprint

    def fp(*overrides: str) -> str:
        cfg = compose("train", [f"paths.root_dir={tmp_path}", *overrides])
        return fingerprint(cfg, [], train_stage.SPEC.config_keys)

    assert fp("mix=none", "+mix.tasks.search=null") == fp("mix=none")
    assert fp("mix=subject_search", "mix.tasks.search=null") != fp("mix=subject_search")
