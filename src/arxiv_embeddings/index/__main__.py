"""``python -m arxiv_embeddings.index``: the index stage (see :mod:`arxiv_embeddings.index`)."""

from arxiv_embeddings.index.stage import main

if __name__ == "__main__":
    main()
