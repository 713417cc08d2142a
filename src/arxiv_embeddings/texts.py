"""How a paper becomes one text, as every stage and the API build it: the text fields a config may name and the
separator between a title and its abstract. Plain Python (the API imports it; :mod:`arxiv_embeddings.papers` builds
the texts of whole tables with it)."""

from __future__ import annotations

#: Text of a paper (``pairs.text``, ``evaluate.text``, ``index.text``, ...): title | abstract | title_abstract.
TEXT_FIELDS = ("title", "abstract", "title_abstract")
#: Between a title and its abstract in ``title_abstract`` texts.
TITLE_ABSTRACT_SEPARATOR = "\n"
