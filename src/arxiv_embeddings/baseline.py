"""baseline: TF-IDF and the zero-shot base model, scored by the evaluate stage's own code on the same test split.

    uv run inv baseline                                   # reports/tfidf and reports/zero-shot
    uv run inv baseline --overrides "baseline.runs=[tfidf]"
    OPENAI_API_KEY=... uv run inv baseline --overrides "baseline.runs=[hosted_api]"   # reports/hosted-api

TF-IDF: a ``TfidfVectorizer`` fit on the train split; retrieval is the cosine similarity of the (L2-normalized)
TF-IDF rows and the classifier a logistic regression on them. Zero-shot: the sentence-transformers model before
fine-tuning (``sentence-transformers/all-MiniLM-L6-v2`` by default). Hosted API (off by default): the vectors of an
OpenAI-compatible embeddings endpoint (:mod:`arxiv_embeddings.backends.hosted`, cached on disk). All go through
:func:`arxiv_embeddings.evaluation.scoring.evaluate_features`, so their ``metrics.json`` have the schema of a trained
model's and :func:`arxiv_embeddings.report.compare` can put every run side by side.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from loguru import logger
from omegaconf import DictConfig

from arxiv_embeddings.config import (
    CONFIG_DIR,
    ConfigError,
    check_int,
    check_missing,
    require,
    require_http_url,
    require_in,
    to_plain,
)
from arxiv_embeddings.evaluation.data import EvalData, fresh_inputs, load_data, read_sample
from arxiv_embeddings.evaluation.features import Features, features_from
from arxiv_embeddings.evaluation.scoring import evaluate_features, evaluate_model, summary_line
from arxiv_embeddings.evaluation.settings import (
    check_report_name,
    local_model_dir,
    model_source,
    report_dir,
    report_files,
    validate_evaluation,
)
from arxiv_embeddings.io import artifact_path
from arxiv_embeddings.layout import processed_split
from arxiv_embeddings.papers import paper_text
from arxiv_embeddings.runner import StageSpec

RUNS = ("tfidf", "zero_shot", "hosted_api")
STOP_WORDS = ("english",)

__all__ = ["RUNS", "SPEC", "run", "tfidf_features", "validate"]


# --------------------------------------------------------------------------------------------- validation
def validate(cfg: DictConfig) -> None:
    """Check the config before any work, naming the offending key."""
    check_missing(cfg)
    validate_evaluation(cfg)
    b = cfg.baseline
    runs = list(b.runs)
    require(len(runs) > 0, "baseline.runs", f"is empty; choose from {', '.join(RUNS)}.")
    for name in runs:
        require_in("baseline.runs", name, RUNS)
    for key in RUNS:
        check_report_name(str(b[key].name), f"baseline.{key}.name")
    names = [str(b[key].name) for key in RUNS]
    for i, key in enumerate(RUNS):
        require(
            names[i] not in names[:i],
            f"baseline.{key}.name",
            f"{names[i]!r} is also the name of another baseline; each needs its own report folder.",
        )
    t = b.tfidf
    check_int(t.max_fit_papers, "baseline.tfidf.max_fit_papers", optional=True)
    check_int(t.max_features, "baseline.tfidf.max_features", optional=True)
    check_int(t.ngram_max, "baseline.tfidf.ngram_max")
    check_int(t.min_df, "baseline.tfidf.min_df")
    require(
        isinstance(t.max_df, (int, float)) and 0 < t.max_df <= 1,
        "baseline.tfidf.max_df",
        f"got {t.max_df!r}; a fraction in (0, 1].",
    )
    if t.stop_words is not None:
        require_in("baseline.tfidf.stop_words", t.stop_words, STOP_WORDS)
    require(
        bool(str(b.zero_shot.model).strip()), "baseline.zero_shot.model", "is empty; pass a Hub name or a model folder."
    )
    if "hosted_api" in runs:
        validate_hosted(b.hosted_api)


def validate_hosted(h: DictConfig) -> None:
    """Check ``baseline.hosted_api`` (when the run is selected)."""
    require_http_url(h.base_url, "baseline.hosted_api.base_url")
    require(bool(str(h.model).strip()), "baseline.hosted_api.model", "is empty; name the embedding model.")
    check_int(h.dimensions, "baseline.hosted_api.dimensions", optional=True)
    check_int(h.batch_size, "baseline.hosted_api.batch_size")
    check_int(h.max_retries, "baseline.hosted_api.max_retries", minimum=0)
    for key in ("timeout_s",):
        value = h[key]
        require(
            isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
            f"baseline.hosted_api.{key}",
            f"got {value!r}; a number of seconds > 0.",
        )
    require(bool(str(h.cache or "").strip()), "baseline.hosted_api.cache", "is empty; a file path for the cache.")


# ------------------------------------------------------------------------------------------------- tf-idf
def tfidf_features(data: EvalData, cfg: DictConfig) -> Features:
    """Fit a TF-IDF vectorizer on the train split and turn the test and classifier-train papers into sparse rows."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    t, text = cfg.baseline.tfidf, str(cfg.evaluate.text)
    fit_table, _ = read_sample(data.train_path, t.max_fit_papers, int(cfg.seed), "tfidf_fit")
    vectorizer = TfidfVectorizer(
        max_features=None if t.max_features is None else int(t.max_features),
        ngram_range=(1, int(t.ngram_max)),
        min_df=int(t.min_df) if fit_table.num_rows >= int(t.min_df) else 1,
        max_df=float(t.max_df),
        sublinear_tf=bool(t.sublinear_tf),
        stop_words=t.stop_words,
        dtype=np.float32,
    )
    logger.info(f"Fitting TF-IDF on {fit_table.num_rows:,} train papers ({text}).")
    try:
        vectorizer.fit(paper_text(fit_table, text))
    except ValueError as err:  # e.g. max_df / min_df leave no term
        raise ConfigError(f"baseline.tfidf: the vectorizer could not be fit ({err}); loosen min_df / max_df.") from err
    features = features_from(lambda texts, _what: vectorizer.transform(texts), data, text)
    features.info = {
        "kind": "tfidf",
        "dim": len(vectorizer.vocabulary_),
        "fit_papers": fit_table.num_rows,
        "device": "cpu",
    }
    return features


def run_tfidf(cfg: DictConfig, data: EvalData) -> dict[str, Any]:
    """The TF-IDF baseline's report folder and metrics."""
    t0 = time.perf_counter()
    features = tfidf_features(data, cfg)
    timing = {"fit_transform_s": round(time.perf_counter() - t0, 3)}
    extra = {"baseline": {"tfidf": to_plain(cfg.baseline.tfidf)}}
    return evaluate_features(
        str(cfg.baseline.tfidf.name), "tfidf", features, data, cfg, extra_config=extra, timing=timing
    )


def run_zero_shot(cfg: DictConfig, data: EvalData) -> dict[str, Any]:
    """The zero-shot base model's report folder and metrics."""
    z = cfg.baseline.zero_shot
    return evaluate_model(cfg, str(z.model), str(z.name), data)


def hosted_embedder(h: DictConfig) -> Any:
    """The :class:`~arxiv_embeddings.backends.hosted.HostedEmbedder` of ``baseline.hosted_api``."""
    from arxiv_embeddings.backends.hosted import HostedEmbedder

    return HostedEmbedder(
        str(h.base_url),
        str(h.model),
        cache=str(h.cache),
        api_key_env=h.api_key_env,
        dimensions=h.dimensions,
        batch_size=int(h.batch_size),
        max_retries=int(h.max_retries),
        timeout_s=float(h.timeout_s),
    )


def hosted_features(embedder: Any, data: EvalData, cfg: DictConfig) -> Features:
    """The test titles, abstracts and papers and the classifier's train papers, embedded by ``embedder``."""
    features = features_from(lambda texts, _what: embedder.encode(texts), data, str(cfg.evaluate.text))
    features.info = {  # after encoding: how many texts came from the cache
        "kind": "hosted-api",
        "endpoint": embedder.url,
        "dim": int(embedder.dimension),
        "device": "remote",
        "requests": embedder.requests,
        "texts_requested": embedder.texts_requested,
        "texts_cached": embedder.texts_cached,
    }
    return features


def run_hosted_api(cfg: DictConfig, data: EvalData) -> dict[str, Any]:
    """The hosted embedding API's report folder and metrics."""
    h = cfg.baseline.hosted_api
    t0 = time.perf_counter()
    embedder = hosted_embedder(h)
    features = hosted_features(embedder, data, cfg)
    logger.info(
        f"hosted API {h.model}: {embedder.texts_requested:,} texts requested in {embedder.requests:,} requests, "
        f"{embedder.texts_cached:,} from the cache {h.cache}."
    )
    timing = {"encode_s": round(time.perf_counter() - t0, 3)}
    extra = {"baseline": {"hosted_api": {k: v for k, v in to_plain(h).items() if k != "cache"}}}
    return evaluate_features(str(h.name), str(h.model), features, data, cfg, extra_config=extra, timing=timing)


RUNNERS = {"tfidf": run_tfidf, "zero_shot": run_zero_shot, "hosted_api": run_hosted_api}


# --------------------------------------------------------------------------------------------------- run
def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the selected baselines: returns ``{"runs": {name: {"dir", "metrics", "files"}}}``."""
    validate(cfg)
    started = time.perf_counter()
    runs = list(dict.fromkeys(cfg.baseline.runs))
    if "zero_shot" in runs:
        model_source(cfg, str(cfg.baseline.zero_shot.model))  # fail on a missing model before any work
    data = load_data(cfg)
    results: dict[str, Any] = {}
    for key in runs:
        result = RUNNERS[key](cfg, data)
        results[str(cfg.baseline[key].name)] = result
        logger.info(f"baseline: {summary_line(result)}.")
    names = ", ".join(str(r["dir"]) for r in results.values())
    logger.success(f"baseline: {len(results)} baseline(s) written to {names} in {time.perf_counter() - started:.1f}s.")
    return {"runs": results}


def _inputs(cfg: DictConfig) -> list[Path]:
    paths = [processed_split(cfg, "test"), processed_split(cfg, "train"), *fresh_inputs(cfg)]
    if "zero_shot" in cfg.baseline.runs:
        model_dir = local_model_dir(cfg, str(cfg.baseline.zero_shot.model))
        paths += [model_dir] if model_dir is not None else []
    return paths


def _outputs(cfg: DictConfig) -> list[Path]:
    names = [str(cfg.baseline[key].name) for key in dict.fromkeys(cfg.baseline.runs)]
    return [f for name in names for f in report_files(report_dir(cfg, name))]


SPEC = StageSpec(
    name="baseline",
    run=run,
    inputs=_inputs,
    outputs=_outputs,
    stamp_dir=lambda cfg: artifact_path(cfg.paths.reports_dir),
    validate=validate,
    config_keys=("evaluate", "baseline", "seed"),
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="baseline")
def main(cfg: DictConfig) -> None:
    from arxiv_embeddings.runner import cli_main

    cli_main(SPEC, cfg)


if __name__ == "__main__":
    main()
