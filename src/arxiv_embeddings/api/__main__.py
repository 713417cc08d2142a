"""``python -m arxiv_embeddings.api [hydra overrides]``: serve the API (see :mod:`arxiv_embeddings.api`)."""

from arxiv_embeddings.api.server import main

if __name__ == "__main__":
    main()
