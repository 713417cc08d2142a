"""``python -m arxiv_embeddings.export``: the export stage (see :mod:`arxiv_embeddings.export`)."""

from arxiv_embeddings.export.stage import main

if __name__ == "__main__":
    main()
