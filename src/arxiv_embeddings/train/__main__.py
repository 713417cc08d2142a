"""``python -m arxiv_embeddings.train``: the train stage (see :mod:`arxiv_embeddings.train`)."""

from arxiv_embeddings.train.stage import main

if __name__ == "__main__":
    main()
