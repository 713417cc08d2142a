"""index: embed a corpus of papers and build a FAISS index over it, for nearest-paper search.

    uv run inv index                                                 # the model this run trained, all splits
    uv run inv index --overrides "index.model=sentence-transformers/all-MiniLM-L6-v2 index.type=flat"
    uv run inv index --overrides "index.type=ivf index.ivf.pq_m=48"    # IVF-PQ for a large corpus
    arxiv-embed search "graph neural networks for molecules" -k 5
    arxiv-embed search --id 2401.01234                               # papers like this one

Settings live in ``configs/base.yaml`` (section ``index:``). The stage writes ``${paths.indexes_dir}/<name>/``:

- ``index.faiss``: the FAISS index over L2-normalized embeddings, inner product (= cosine similarity);
- ``search.faiss``: for a model whose ``tasks.json`` serves the search task with another output (a subject head
  over its encoder, or the base model it keeps in ``base/``), the papers in that output, where free-text queries
  are searched (manifest ``search``);
- ``metadata.parquet``: ``arxiv_id``, ``title``, ``primary_subject``; row ``i`` is vector id ``i``;
- ``manifest.json``: the model (name, folder, fingerprint of its weights), backend, variant, the model output the
  papers were embedded with (``output``: ``model``, every module of the folder), dimension, count,
  index type and parameters, the corpus files, the build report (recall@10 against exact search, queries/s,
  index bytes, RSS), the search vectors' output and dimension, and the sha256 of the files above.

The corpus is embedded in shards of ``index.shard_size`` papers written to ``${paths.indexes_dir}/.embeddings/<key>``
as they finish (one shard in memory at a time, with a progress bar); the key covers the model's weights, the
backend, variant, length, text and the corpus bytes, so a build that crashed resumes from its last shard, and
another index type over the same vectors re-uses them all. The index is built in a temporary folder that replaces
the previous one only when everything succeeded. ``index.workers`` embeds the shards in worker processes
(:mod:`~arxiv_embeddings.index.workers`); ``index.part=k/N`` embeds one share of them for a job of several machines
(:mod:`~arxiv_embeddings.index_launcher`), and a run without it builds the index.

With ``paths=gcs`` the corpus is read from the bucket, a model in the bucket is copied to ``${paths.cache_dir}``
(once per content) to be loaded, and the index folder is published to the bucket; the embedding shards stay on local
disk (see :func:`~arxiv_embeddings.index.build.embeddings_dir`), except a part run's, which it also copies to the
bucket for the build to find (:func:`~arxiv_embeddings.index.build.shared_embeddings_dir`).

Python API (used by the search CLI and the web service)::

    from arxiv_embeddings.index.format import index_dir
    from arxiv_embeddings.index.search import PaperIndex
    index = PaperIndex.load(index_dir(cfg), expected_model="models/my-run/final")   # or expected_model=None
    index.search(vectors, k=5)          # -> list[list[Hit]], one list per query vector (any float array, (n, dim))
    index.search(vectors, k=5, output=index.query_output)   # among the papers in the search output
    index.search_text(embedder, ["a title\nan abstract"], k=5)   # embedded and searched in index.query_output
    index.search_id("2401.01234", k=5)  # -> list[Hit], the paper itself excluded; UnknownPaperError if not indexed
    index.manifest                      # dict: model, model_location, model_fingerprint, backend, variant,
                                        #   output, dimension, count, index_type, index_params, text, build, ...
    index.output                        # the model output its papers were embedded with ("model" if unrecorded)
    index.query_output                  # the output free-text queries are embedded with (the search task's)
    len(index)                          # number of papers

``Hit`` is a frozen dataclass ``(arxiv_id, title, primary_subject, score)``, ``score`` the cosine similarity.
Loading fails with :class:`~arxiv_embeddings.index.format.IndexNotFoundError` (no index there),
:class:`~arxiv_embeddings.index.format.IndexCorruptedError` (a file is missing, changed or unreadable) or
:class:`~arxiv_embeddings.index.format.ModelMismatchError` (``expected_model`` is not the model that built it; also
raised by ``search``/``search_text`` for vectors or an embedder of another dimension). A loaded index is only read
by ``search*``, so one instance can serve concurrent requests. Nothing here imports torch.

The package's modules: :mod:`~arxiv_embeddings.index.format` (the folder on disk, its errors, the embedding
shards), :mod:`~arxiv_embeddings.index.search` (:class:`~arxiv_embeddings.index.search.PaperIndex`, ``Hit``,
:func:`~arxiv_embeddings.index.search.query_embedder`), :mod:`~arxiv_embeddings.index.quality` (recall@k against
exact search), :mod:`~arxiv_embeddings.index.build` (corpus, resumable embedding, building) and
:mod:`~arxiv_embeddings.index.stage` (``validate``, ``run``, ``SPEC``, ``main``); the FAISS index types are in
:mod:`arxiv_embeddings.ann`. Each name is imported from the module that defines it, so reading a folder's names
(``index_dir``, the API's settings) loads neither pyarrow nor FAISS; ``python -m arxiv_embeddings.index`` runs the
stage.
"""
