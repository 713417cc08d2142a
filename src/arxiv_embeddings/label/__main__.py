"""``python -m arxiv_embeddings.label``: the label stage (see :mod:`arxiv_embeddings.label`)."""

from arxiv_embeddings.label.stage import main

if __name__ == "__main__":
    main()
