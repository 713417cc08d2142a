"""LoRA on a tiny decoder-only (Qwen2) backbone, InfoNCE on title <-> abstract pairs, category-aware batches without
false negatives, title -> abstract retrieval through FAISS, and the hosted embedding API baseline against a local
HTTP server."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from helpers.http_client import send_json

from arxiv_embeddings import baseline, evaluate, pairs
from arxiv_embeddings.backends.loading import load_model
from arxiv_embeddings.backends.lora import ADAPTER_CONFIG, add_lora, is_adapter_dir
from arxiv_embeddings.config import ConfigError, compose
from arxiv_embeddings.evaluation.scoring import faiss_paired_retrieval
from arxiv_embeddings.metrics import RankingCutoffs, paired_retrieval
from arxiv_embeddings.train import stage as train_stage
from arxiv_embeddings.train.objectives import build_loss, check_loss_matches_pairs
from arxiv_embeddings.train.samplers import CategoryBatchSampler, archive_of, conflict_keys
from arxiv_embeddings.train.sets import category_batches

LINEAR = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
TEXTS = ["Graph neural networks for molecules", "Dark matter halos in dwarf galaxies", "A proof of the conjecture"]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain Hugging Face folder (no modules.json) of a tiny randomly initialised Qwen2 model, built from a config,
    with MiniLM's tokenizer (no download)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    from arxiv_embeddings.backends.loading import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    config = Qwen2Config(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-qwen") / "hf"
    Qwen2Model(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _root_with_pairs(root: Path, processed_root: Path, *overrides: str) -> Path:
    shutil.copytree(processed_root / "data" / "processed", root / "data" / "processed")
    # LoRA on one task's pairs (mix=none): the adapter, not the mix, is under test here
    pairs.run(compose("pairs", [f"paths.root_dir={root}", "mix=none", "pairs.num_eval=16", *overrides]))
    return root


def _lora_cfg(root: Path, model: Path, *overrides: str):
    return compose(
        "train",
        [
            f"paths.root_dir={root}",
            f"model.name={model}",
            "run_name=qwen",
            "mix=none",
            "loss=infonce",
            "+model.pooling=mean",
            f"+model.lora={{r: 4, alpha: 8, dropout: 0.0, target_modules: {LINEAR}, merge: true}}",
            "train.batch_sampler=category",
            # the adapted model trains on title -> abstract pairs and serves search itself, as experiment=qwen_lora
            "train.search_model=trained",
            "train.freeze_layers=0",
            "train.max_seq_length=32",
            "train.eval_papers=24",
            "train.test_papers=24",
            "trainer.max_steps=3",
            "trainer.per_device_train_batch_size=8",
            "trainer.gradient_accumulation_steps=2",
            "trainer.learning_rate=0.02",
            "trainer.warmup_ratio=0.0",
            "trainer.eval_steps=100",
            "trainer.save_steps=100",
            "trainer.logging_steps=1",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, processed_root: Path, tiny_qwen_dir: Path) -> dict:
    root = _root_with_pairs(
        tmp_path_factory.mktemp("lora"), processed_root, "pairs=title_abstract", "pairs.num_train=96"
    )
    # bf16 on every CPU: what precision=auto picks on a CPU with AMX / AVX512-BF16. The saved and the in-memory
    # model must still embed alike in fp32 afterwards (the trainer's autocast wrapper is dropped after training).
    return {"root": root, **train_stage.run(_lora_cfg(root, tiny_qwen_dir, "train.precision=bf16"))}


def _encode(model, texts: list[str] = TEXTS) -> np.ndarray:
    return model.encode(texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)


# -------------------------------------------------------------------------------------------------- LoRA
def test_decoder_only_backbone_is_a_mean_pooled_encoder_without_lm_head(tiny_qwen_dir: Path) -> None:
    model = load_model(tiny_qwen_dir, device="cpu", max_seq_length=48)
    assert type(model.transformers_model).__name__ == "Qwen2Model"  # AutoModel: no LM head
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert model[1].pooling_mode == "mean"
    # Masked mean: padding a text (in a batch with a longer one) does not change its embedding.
    alone = _encode(model, TEXTS[:1])
    padded = _encode(model, [TEXTS[0], TEXTS[1] + " with a much longer title that needs many more tokens"])
    np.testing.assert_allclose(alone[0], padded[0], atol=1e-5)


@pytest.mark.slow
def test_lora_trains_the_adapter_only_and_saves_adapter_and_merged_model(lora_run: dict, tiny_qwen_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    summary = lora_run["summary"]
    assert summary["precision"] == "bf16"
    assert summary["global_step"] == 3 and np.isfinite(summary["train"]["train_loss"])
    assert summary["batch_sampler"] == "category" and summary["loss"]["name"] == "InfoNCE"
    assert re.match(r"LoRA r=4 alpha=8 on 14 layers \(0\.\d+M of \d+\.\dM parameters trained\)", summary["frozen"])
    lora = summary["lora"]
    assert lora["merged"] and lora["merged_layers"] == 14 and lora["merge_max_abs_diff"] < 1e-5
    # The training evaluator of title_abstract pairs is title -> abstract retrieval.
    assert 0.0 <= lora_run["test"]["test_cosine_recall@10"] <= 1.0

    run_dir = lora_run["root"] / "models" / "qwen"
    adapter, final = run_dir / "adapter", run_dir / "final"
    assert is_adapter_dir(adapter) and not (adapter / "model.safetensors").exists()
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    assert config["base_model_name_or_path"] == str(tiny_qwen_dir.resolve()) and config["r"] == 4
    assert not is_adapter_dir(final) and (final / "model.safetensors").exists()
    assert "peft" not in (final / "config.json").read_text()

    with_adapter = load_model(adapter, device="cpu")
    merged = SentenceTransformer(str(final), device="cpu")  # a plain sentence-transformer, no peft involved
    base = load_model(tiny_qwen_dir, device="cpu")
    emb_adapter, emb_merged, emb_base = _encode(with_adapter), _encode(merged), _encode(base)
    np.testing.assert_allclose(emb_merged, emb_adapter, atol=1e-5)
    assert np.abs(emb_adapter - emb_base).max() > 1e-3  # the trained adapter was loaded, not a fresh one
    # Only the adapter trained: with it switched off, the backbone is the base model.
    with_adapter.disable_adapters()
    np.testing.assert_allclose(_encode(with_adapter), emb_base, atol=1e-5)


@pytest.mark.slow
def test_stages_accept_the_saved_adapter_and_merged_model(lora_run: dict, make_cfg) -> None:
    """evaluate scores the merged model (the run name) and the adapter folder alike; index builds over the adapter
    folder; export refuses the adapter and names the merged model."""
    from arxiv_embeddings.export.plan import model_target
    from arxiv_embeddings.index import stage as index_stage

    root = lora_run["root"]
    adapter = root / "models" / "qwen" / "adapter"
    caps = [
        "evaluate.max_test_papers=40",
        "evaluate.classification.max_train_papers=40",
        "evaluate.plots.max_points=40",
    ]
    merged = evaluate.run(make_cfg("evaluate", root, ["evaluate.model=qwen", *caps]))["metrics"]
    with_adapter = evaluate.run(
        make_cfg("evaluate", root, [f"evaluate.model={adapter}", "evaluate.report_name=qwen-adapter", *caps])
    )["metrics"]
    assert merged["title_abstract"]["search"] == "faiss-flat"
    assert merged["title_abstract"]["mrr@10"] == pytest.approx(with_adapter["title_abstract"]["mrr@10"], abs=1e-6)
    assert merged["subject_retrieval"]["ndcg@10"] == pytest.approx(
        with_adapter["subject_retrieval"]["ndcg@10"], abs=1e-6
    )

    built = index_stage.run(
        make_cfg(
            "index",
            root,
            [
                f"index.model={adapter}",
                "index.backend=torch",
                "index.type=flat",
                "index.corpus.splits=[test]",
                "index.threads=1",
            ],
        )
    )
    import pyarrow.parquet as pq

    test_papers = pq.read_metadata(root / "data" / "processed" / "test.parquet").num_rows
    assert built["manifest"]["count"] == test_papers and built["manifest"]["dimension"] == 32

    with pytest.raises(ConfigError, match=r"holds a LoRA adapter.*models/<run>/final"):
        model_target(make_cfg("export", root, [f"export.model={adapter}"]))


def test_the_api_serves_the_adapter_folder_with_torch_and_names_the_merged_model_for_onnx(
    lora_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient
    from helpers.api import assert_error, clear_serving_env, make_settings, wait_ready

    from arxiv_embeddings.api.app import create_app
    from arxiv_embeddings.backends.loading import load_model

    clear_serving_env(monkeypatch)
    adapter = lora_run["root"] / "models" / "qwen" / "adapter"
    with TestClient(create_app(make_settings(tmp_path, adapter, "serve.backend=torch"))) as client:
        health = wait_ready(client)
        assert (health["backend"], health["dimension"]) == ("torch", 32)
        served = np.asarray(client.post("/embed", json={"input": TEXTS}).json()["embeddings"])
    np.testing.assert_allclose(served, _encode(load_model(adapter, device="cpu")), atol=1e-5)

    with TestClient(create_app(make_settings(tmp_path, adapter, "serve.backend=onnx"))) as client:
        assert not client.app.state.service.wait_loaded(60)  # type: ignore[attr-defined]
        error = assert_error(client.get("/health"), 503, "model_load_failed")
    merged = lora_run["root"] / "models" / "qwen" / "final"
    assert f"{adapter} is a LoRA adapter folder" in error["message"]
    assert f"serve the merged model {merged}" in error["message"] and "backend=torch" in error["message"]


@pytest.mark.slow
def test_lora_checkpoints_resume(tmp_path: Path, processed_root: Path, tiny_qwen_dir: Path) -> None:
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            if state.global_step == 3:
                raise KeyboardInterrupt("simulated crash after the step-2 checkpoint")

    root = _root_with_pairs(tmp_path, processed_root, "pairs=title_abstract", "pairs.num_train=64")
    overrides = ["trainer.max_steps=4", "trainer.save_steps=2", "train.eval_papers=0", "train.test_papers=0"]
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(_lora_cfg(root, tiny_qwen_dir, *overrides), callbacks=[Crash()])
    checkpoint = root / "models" / "qwen" / "checkpoints" / "checkpoint-2"
    assert is_adapter_dir(checkpoint) and (checkpoint / "config.json").exists()
    result = train_stage.run(_lora_cfg(root, tiny_qwen_dir, *overrides))
    assert result["summary"]["global_step"] == 4


def test_lora_config_errors_name_the_key(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    cfg = _lora_cfg(tmp_path, tiny_qwen_dir, "model.lora.r=0")
    with pytest.raises(ConfigError, match=r"model\.lora\.r: got 0"):
        train_stage.validate(cfg)
    cfg = _lora_cfg(tmp_path, tiny_qwen_dir, "model.lora.target_modules=[]")
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules"):
        train_stage.validate(cfg)
    model = load_model(tiny_qwen_dir, device="cpu")
    lora = _lora_cfg(tmp_path, tiny_qwen_dir, "model.lora.target_modules=[query]").model.lora
    with pytest.raises(ConfigError, match=r"matches no layer of Qwen2Model.*q_proj"):
        add_lora(model, lora)


# ---------------------------------------------------------------------------------------- InfoNCE, batches
def test_infonce_is_mnrl_with_scale_one_over_temperature(tiny_model_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses

    cfg = compose("train", [f"paths.root_dir={tmp_path}", "loss=infonce", "loss.temperature=0.1"])
    loss = build_loss(SentenceTransformer(str(tiny_model_dir), device="cpu"), cfg.loss)
    assert isinstance(loss, losses.MultipleNegativesRankingLoss)
    assert loss.scale == pytest.approx(10.0) and loss.directions == ("query_to_doc", "doc_to_query")
    check_loss_matches_pairs(cfg.loss, "title_abstract")
    with pytest.raises(ConfigError, match=r"does not fit pairs of type 'graded'"):
        check_loss_matches_pairs(cfg.loss, "graded")
    with pytest.raises(ConfigError, match=r"loss\.temperature=0"):
        build_loss(
            SentenceTransformer(str(tiny_model_dir), device="cpu"),
            compose("train", ["loss=infonce", "loss.temperature=0"]).loss,
        )


SUBJECTS = ["cs.LG", "cs.CV", "cs.CL", "cs.RO", "math.AP", "math.NA", "quant-ph", "hep-ph", "astro-ph.GA", "q-bio.NC"]


def _batch_conflicts(batch: list[int], keys: np.ndarray) -> int:
    values = keys[batch][keys[batch] >= 0]
    return len(values) - len(np.unique(values))


@pytest.mark.parametrize("distinct_subjects", [False, True])
def test_category_batches_never_hold_a_false_negative(distinct_subjects: bool) -> None:
    """Many random pair sets with repeated papers and duplicated texts: every pair lands in exactly one batch, and no
    batch holds two pairs that share a paper, a text or (with distinct_subjects) a subject."""
    for trial in range(40):
        rng = np.random.default_rng(trial)
        n, bs = int(rng.integers(20, 400)), int(rng.integers(2, 33))
        papers = rng.integers(0, max(2, n // 2), n)  # about two pairs per paper
        subjects = np.asarray(SUBJECTS, dtype=object)[papers % len(SUBJECTS)]
        titles = np.array([f"title {p % max(2, n // 3)}" for p in papers], dtype=object)  # duplicate titles
        abstracts = np.array([f"abstract {p}" for p in papers], dtype=object)
        keys = conflict_keys([papers.astype(str)], [titles, abstracts])
        sampler = CategoryBatchSampler(
            list(range(n)),
            bs,
            drop_last=False,
            subjects=subjects,
            keys=keys,
            hard_fraction=float(rng.random()),
            distinct_subjects=distinct_subjects,
            seed=trial,
        )
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert len(batches) == len(sampler) and all(0 < len(b) <= bs for b in batches)
        for batch in batches:
            assert _batch_conflicts(batch, keys) == 0
            assert len(set(papers[batch])) == len(batch) and len(set(titles[batch])) == len(batch)
            if distinct_subjects:
                assert len(set(subjects[batch])) == len(batch)


def test_category_batches_mix_related_and_distant_fields() -> None:
    rng = np.random.default_rng(0)
    n, bs = 4000, 32
    subjects = np.asarray(SUBJECTS, dtype=object)[rng.integers(0, len(SUBJECTS), n)]
    keys = conflict_keys([np.arange(n).astype(str)])
    sampler = CategoryBatchSampler(list(range(n)), bs, False, subjects=subjects, keys=keys, hard_fraction=0.5, seed=3)
    batches = sampler.batches(0)
    assert sampler.stats["shaped_batches"] == len(batches) == n // bs  # 4000 = 125 full batches
    archives = np.array([archive_of(s) for s in subjects])
    mixed = 0
    for batch in batches:
        names, counts = np.unique(archives[batch], return_counts=True)
        focus = names[counts.argmax()]
        assert counts.max() >= bs // 2  # the related-field half
        if focus in ("cs", "math"):
            assert len(set(subjects[batch][archives[batch] == focus])) > 1  # several subjects of the archive
        mixed += len(names) >= 3
    # and distant fields, but for the last few batches of an epoch, when only one archive has pairs left
    assert mixed >= 0.9 * len(batches)
    # a plain shuffle has no focus: its largest archive share stays well under half
    plain = [archives[rng.permutation(n)[:bs]] for _ in range(50)]
    assert np.mean([np.unique(b, return_counts=True)[1].max() for b in plain]) < bs / 2
    assert [list(b) for b in sampler.batches(0)] != [list(b) for b in sampler.batches(1)]


def test_category_batches_of_real_title_abstract_pairs(tmp_path: Path, processed_root: Path) -> None:
    """Pairs files where papers repeat (more pairs than papers): the keys built from them keep each paper, title and
    abstract once per batch."""
    import pyarrow.parquet as pq

    root = _root_with_pairs(tmp_path, processed_root, "pairs=title_abstract", "pairs.num_train=1500")
    train_file = root / "data" / "pairs" / "train.parquet"
    pairs_table, meta_table = pq.read_table(train_file), pq.read_table(root / "data" / "pairs" / "train_meta.parquet")
    hard = float(compose("train", [f"paths.root_dir={root}"]).train.category_batches.hard_fraction)
    args = category_batches(pairs_table, meta_table, "title_abstract", hard)
    table, meta = pairs_table.to_pandas(), meta_table.to_pandas()
    assert meta.a_id.duplicated().any()  # the situation that makes false negatives in plain batches
    sampler = CategoryBatchSampler(list(range(len(table))), 64, False, **args)
    for batch in sampler:
        assert not meta.a_id.iloc[batch].duplicated().any()
        assert not table.anchor.iloc[batch].duplicated().any() and not table.positive.iloc[batch].duplicated().any()


# ------------------------------------------------------------------------------------ title -> abstract
def test_faiss_title_abstract_search_matches_exact_search() -> None:
    rng = np.random.default_rng(0)
    abstracts = rng.normal(size=(300, 16)).astype(np.float32)
    titles = abstracts + rng.normal(scale=0.8, size=abstracts.shape).astype(np.float32)
    titles /= np.linalg.norm(titles, axis=1, keepdims=True)
    abstracts /= np.linalg.norm(abstracts, axis=1, keepdims=True)
    cutoffs = RankingCutoffs(precision_recall_at=(1, 10), accuracy_at=(), mrr_at=(10,), ndcg_at=(), map_at=())
    exact = paired_retrieval(titles, abstracts, cutoffs=cutoffs).summary()
    flat, info = faiss_paired_retrieval(titles, abstracts, cutoffs, "flat")
    assert info == {"search": "faiss-flat"}
    assert flat.summary() == pytest.approx(exact)
    assert 0.2 < exact["recall@1"] < 1.0 and exact["precision@10"] == pytest.approx(exact["recall@10"] / 10)
    hnsw, info = faiss_paired_retrieval(
        titles, abstracts, cutoffs, "hnsw", {"m": 16, "ef_construction": 40, "ef_search": 64}
    )
    assert info["search"] == "faiss-hnsw" and info["index_params"]["ef_search"] == 64
    assert hnsw.summary()["recall@10"] == pytest.approx(exact["recall@10"], abs=0.05)


# ------------------------------------------------------------------------------------- hosted API baseline
class FakeEmbeddings(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/embeddings: hashed bag-of-words vectors (so titles find their abstracts), a bearer
    token check, and one 429 with Retry-After before the first success."""

    calls: ClassVar[list[int]] = []
    fail_next = 1
    token = "test-key"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/embeddings":
            return send_json(self, 404, {"error": {"message": f"no route {self.path}"}})
        if self.headers.get("Authorization") != f"Bearer {type(self).token}":
            return send_json(self, 401, {"error": {"message": "Incorrect API key provided"}})
        if type(self).fail_next:
            type(self).fail_next -= 1
            return send_json(self, 429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "0"})
        type(self).calls.append(len(body["input"]))
        dim = int(body.get("dimensions") or 64)
        data = []
        for i, text in enumerate(body["input"]):
            vector = np.zeros(dim)
            for word in re.findall(r"\w+", text.lower()):
                vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
            data.append({"object": "embedding", "index": i, "embedding": vector.tolist()})
        send_json(self, 200, {"object": "list", "data": data[::-1], "model": body["model"]})  # any order, by index


@pytest.fixture()
def fake_api() -> Iterator[str]:
    FakeEmbeddings.calls, FakeEmbeddings.fail_next = [], 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEmbeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_hosted_api_baseline_is_scored_like_any_run_and_cached(
    fake_api: str, tmp_path: Path, processed_root: Path, make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EMBEDDINGS_KEY", "test-key")
    overrides = [
        f"paths.processed_dir={processed_root / 'data' / 'processed'}",
        "baseline.runs=[hosted_api]",
        f"baseline.hosted_api.base_url={fake_api}",
        "baseline.hosted_api.model=fake-embedding-model",
        "baseline.hosted_api.api_key_env=FAKE_EMBEDDINGS_KEY",
        "baseline.hosted_api.dimensions=256",
        "baseline.hosted_api.batch_size=100",
        "evaluate.max_test_papers=60",
        "evaluate.classification.max_train_papers=60",
    ]
    cfg = make_cfg("baseline", tmp_path, overrides)
    first = baseline.run(cfg)["runs"]["hosted-api"]["metrics"]
    assert first["kind"] == "hosted-api" and first["model"] == "fake-embedding-model"
    assert first["features"]["dim"] == 256 and first["features"]["texts_cached"] == 0
    sent = sum(FakeEmbeddings.calls)
    assert sent == first["features"]["texts_requested"] > 0 and max(FakeEmbeddings.calls) <= 100
    assert first["features"]["requests"] == len(FakeEmbeddings.calls) + 1  # one 429, retried
    # Hashed word counts find a title's own abstract far above chance (1/60), through the FAISS flat index.
    ta = first["title_abstract"]
    assert ta["search"] == "faiss-flat" and ta["recall@1"] > 0.3 and ta["corpus_size"] == 60
    assert (tmp_path / "reports" / "hosted-api" / "report.md").exists()

    # Second run: everything from the cache, not one request, the same numbers; no key needed.
    monkeypatch.delenv("FAKE_EMBEDDINGS_KEY")
    second = baseline.run(cfg)["runs"]["hosted-api"]["metrics"]
    assert sum(FakeEmbeddings.calls) == sent
    assert second["features"]["requests"] == 0 and second["features"]["texts_requested"] == 0
    assert second["title_abstract"] == first["title_abstract"]
    assert second["subject_retrieval"]["precision@10"] == first["subject_retrieval"]["precision@10"]


def test_hosted_api_errors_say_what_to_fix(fake_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from arxiv_embeddings.backends import Embedder
    from arxiv_embeddings.backends.hosted import HostedAPIError, HostedEmbedder

    monkeypatch.delenv("FAKE_EMBEDDINGS_KEY", raising=False)
    embedder = HostedEmbedder(fake_api, "m", cache=tmp_path / "c.sqlite", api_key_env="FAKE_EMBEDDINGS_KEY")
    assert isinstance(embedder, Embedder)  # the one interface of every backend
    with pytest.raises(ConfigError, match=r"\$FAKE_EMBEDDINGS_KEY, which is not set"):
        embedder.encode(["a text"])
    monkeypatch.setenv("FAKE_EMBEDDINGS_KEY", "wrong")
    with pytest.raises(HostedAPIError, match="answered 401 for model 'm': Incorrect API key provided"):
        embedder.encode(["a text"])
    monkeypatch.setenv("FAKE_EMBEDDINGS_KEY", "test-key")
    FakeEmbeddings.fail_next = 3
    impatient = HostedEmbedder(
        fake_api, "m", cache=tmp_path / "c.sqlite", api_key_env="FAKE_EMBEDDINGS_KEY", max_retries=1
    )
    with pytest.raises(HostedAPIError, match=r"giving up after 2 attempts; last error: HTTP 429: Rate limit reached"):
        impatient.encode(["a text"])
    with pytest.raises(ConfigError, match="base_url"):
        baseline.validate(
            compose("baseline", ["baseline.runs=[hosted_api]", "baseline.hosted_api.base_url=api.example"])
        )
