"""Request and response bodies of the API. Requests reject unknown fields; limits that depend on the settings
(texts per request, characters per text, results per search) are checked by :func:`check_texts` and the routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from arxiv_embeddings.texts import TITLE_ABSTRACT_SEPARATOR


class _Strict(BaseModel):
    """Request bodies: unknown fields are refused, and so are values of the wrong JSON type (``true`` for an
    integer, ``"5"`` for a number), instead of being coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------------------------------------- inputs
class Paper(_Strict):
    """A paper as the model saw it in training: its title, its abstract, or both (joined by a newline)."""

    title: str | None = Field(default=None, description="The paper's title.")
    abstract: str | None = Field(default=None, description="The paper's abstract.")

    @model_validator(mode="after")
    def _some_text(self) -> Paper:
        if not (self.title or "").strip() and not (self.abstract or "").strip():
            raise ValueError("a paper needs a non-empty title or abstract (or both)")
        return self

    def text(self) -> str:
        parts = [p.strip() for p in (self.title, self.abstract) if p and p.strip()]
        return TITLE_ABSTRACT_SEPARATOR.join(parts)


Text = Annotated[str, Field(min_length=1, description="Non-empty text (at most serve.max_chars characters).")]
TextOrPaper = Annotated[Text | Paper, Field(description="A text, or a paper {title, abstract}.")]


def as_text(item: str | Paper) -> str:
    return item.text() if isinstance(item, Paper) else item


# ------------------------------------------------------------------------------------------------ /embed
class EmbedRequest(_Strict):
    """One text or paper, or a list of them; or text-embeddings-inference's body (``inputs``), answered in its shape."""

    input: TextOrPaper | Annotated[list[TextOrPaper], Field(min_length=1)] | None = Field(
        default=None,
        description="A text, a paper {title, abstract}, or a list of texts and papers (at most serve.max_batch).",
        examples=["Graph neural networks for molecular property prediction", [{"title": "A title", "abstract": "..."}]],
    )
    inputs: Text | Annotated[list[Text], Field(min_length=1)] | None = Field(
        default=None,
        description="text-embeddings-inference's field: a text or a list of texts, instead of `input`. The answer "
        "is then TEI's too, a bare JSON array of embeddings, so a TEI client works unchanged.",
    )
    truncate: bool | None = Field(
        default=None,
        description="Accepted for TEI clients. Texts are always truncated to the model's max_seq_length tokens "
        "(GET /info: max_input_length), whatever this says.",
    )
    normalize: bool = Field(default=True, description="L2-normalize the embeddings (after any truncation).")
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Keep only the first `dimensions` values of each embedding (Matryoshka truncation); "
        "re-normalized when `normalize` is true.",
    )
    task: str | None = Field(
        default=None,
        description="What the embeddings are for: `subject` (papers of one subject together, papers like this "
        "one), `search` (a title or short query finding its paper) or `graded` (graded relatedness); each is "
        "computed with the output the model folder's tasks.json names (GET /health lists them). Default: the "
        "model's default task.",
        examples=["search"],
    )

    @model_validator(mode="after")
    def _one_input(self) -> EmbedRequest:
        if (self.input is None) == (self.inputs is None):
            raise ValueError(
                "give the texts in `input`, or in `inputs` (text-embeddings-inference's name): one of the two"
            )
        return self


class EmbedResponse(BaseModel):
    embeddings: list[list[float]] = Field(description="One embedding per input, in input order.")
    model: str
    dimension: int = Field(description="Length of each embedding (after truncation).")
    normalized: bool
    task: str = Field(description="The task the embeddings were made for (the default one when none was given).")
    output: str = Field(
        description="The model output that computed them: `model` (every module), `encoder` or `base` (the base "
        "model the folder keeps for search)."
    )


# ---------------------------------------------------------------------------------------- /v1/embeddings
class OpenAIEmbeddingRequest(_Strict):
    """The body of OpenAI's ``POST /v1/embeddings`` (token-id inputs are not supported)."""

    input: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="A text or a list of texts (at most serve.max_batch)."
    )
    model: str = Field(
        description="The task: `<task>` (e.g. `search`) or `<served model>:<task>` (the `model` of GET /health, a "
        "colon, a task). Any other name (e.g. `text-embedding-3-small`) gets the model's default task, so clients "
        "that send a fixed model name keep working; `<served model>:<not a task>` is a 422 listing the tasks."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64`: each embedding as little-endian float32 bytes, base64-encoded."
    )
    dimensions: int | None = Field(default=None, ge=1, description="Matryoshka truncation, re-normalized.")
    user: str | None = Field(default=None, description="Accepted for compatibility; ignored.")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


# ----------------------------------------------------------------------------------------------- /search
class SearchRequest(_Strict):
    """Nearest papers to a text (or paper), or to an indexed paper given by its arXiv id. Give exactly one."""

    text: TextOrPaper | None = Field(default=None, description="A query text, or a paper {title, abstract}.")
    arxiv_id: str | None = Field(
        default=None, min_length=1, description="An indexed paper, e.g. 2401.01234 (no version suffix)."
    )
    k: int = Field(default=10, ge=1, description="How many papers to return (at most serve.max_k).")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.arxiv_id is None):
            raise ValueError("give exactly one of `text` and `arxiv_id`")
        if self.arxiv_id is not None and not self.arxiv_id.strip():
            raise ValueError("`arxiv_id` is empty; give an id such as 2401.01234")
        return self


class SearchHit(BaseModel):
    arxiv_id: str
    title: str
    primary_subject: str
    score: float = Field(description="Cosine similarity to the query.")


class SearchResponse(BaseModel):
    query: str = Field(description="The query text, or the arXiv id.")
    results: list[SearchHit]
    model: str
    index_size: int


# ----------------------------------------------------------------------------------------------- /health
class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model: str = Field(description="The served name (serve.served_name; by default the model's run name).")
    model_path: str = Field(description="Where the model was loaded from: a folder, a Hub name or a gs:// URL.")
    dimension: int
    backend: str
    variant: str
    device: str
    max_seq_length: int
    workers: int = Field(description="Model worker threads, each encoding its own micro-batches.")
    threads: int = Field(description="Intra-op threads of each worker (on a CPU).")
    version: str
    index_size: int | None = Field(description="Papers in the search index; null when /search is off.")
    default_task: str = Field(description="The task of a request that names none.")
    tasks: dict[str, str] = Field(
        description="Each task served (`task` of /embed, `model` of /v1/embeddings) and the model output that "
        "computes it: `model` (every module of the folder), `encoder` (the Transformer and Pooling only) or `base` "
        "(the model the folder keeps in base/ for search: the untouched base model, or one trained for search).",
        examples=[{"subject": "model", "search": "encoder", "graded": "model"}],
    )
    search_output: str | None = Field(
        description="The output /search embeds query texts with: the search task's when the index holds the "
        "papers in it too (its search vectors), else the index's only output; null when /search is off."
    )


class ModelEntry(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When the server started loading the model (Unix seconds).")
    owned_by: str


class ModelsResponse(BaseModel):
    """OpenAI's ``GET /v1/models``: the served name, then ``<served name>:<task>`` for each task."""

    object: Literal["list"] = "list"
    data: list[ModelEntry]


class TaskInfo(BaseModel):
    output: str
    dimension: int


class InfoResponse(BaseModel):
    """What is served, by what and with which limits (text-embeddings-inference's ``/info`` names first)."""

    model_id: str = Field(description="The served name.")
    model_path: str
    model_dtype: str = Field(description="The backend's variant (fp32, bf16, an ONNX variant such as int8-avx2).")
    dimension: int = Field(description="Length of the default task's embeddings.")
    max_input_length: int = Field(description="Tokens read of each text; longer texts are truncated.")
    max_client_batch_size: int = Field(description="Texts per request at most (serve.max_batch).")
    backend: str
    variant: str
    version: str
    default_task: str
    tasks: dict[str, TaskInfo]
    search_output: str | None


# ------------------------------------------------------------------------------------------------ errors
class ErrorDetail(BaseModel):
    type: str = Field(description="A stable machine-readable kind, e.g. invalid_request, queue_full.")
    message: str = Field(description="What went wrong and how to fix it.")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail
