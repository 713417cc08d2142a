"""The embedding API: a FastAPI service for ``/embed``, ``/v1/embeddings``, ``/search``, ``/health`` and ``/metrics``.

Run it (the container command)::

    python -m arxiv_embeddings.api                      # configs/serve.yaml + environment (PORT, MODEL_PATH, ...)
    python -m arxiv_embeddings.api serve.port=9000 serve.model_path=models/my-run/final   # Hydra overrides
    uv run inv serve --port 9000                        # the same, from a checkout

``python -m arxiv_embeddings.api`` is the supported entry point: it configures logging (JSON lines with
``LOG_JSON=1``), listens on ``$PORT`` and shuts down gracefully on SIGTERM. ``uvicorn arxiv_embeddings.api:create_app
--factory`` works too (settings from configs + environment, host and port from uvicorn's flags, uvicorn's logging).

In Python::

    from arxiv_embeddings.api.app import create_app
    from arxiv_embeddings.api.settings import Settings

    app = create_app(Settings.load(["serve.model_path=models/my-run/final"]))

Importing this package loads no model: the app's lifespan does, in the background, and ``/health`` answers 503
until the model is ready.
"""

# The one name this package holds: the factory of ``uvicorn arxiv_embeddings.api:create_app --factory``.
from arxiv_embeddings.api.app import create_app

__all__ = ["create_app"]
