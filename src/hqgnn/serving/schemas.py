"""The request and response models of the HTTP API (what ``/docs`` and ``/openapi.json`` show).

Field names are the public contract: ``user`` / ``item`` (original ids), ``items`` (original
item ids, best first), ``scores`` (the model's scores; popularity counts for a fallback),
``found`` (how many items the answer holds), ``fallback``, ``k``, ``results``.
"""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Id = Union[int, str]


class ErrorResponse(BaseModel):
    detail: str = Field(..., description="one-line reason")


class Recommendation(BaseModel):
    user: Id = Field(..., description="the original user id")
    items: list[Id] = Field(..., description="original item ids, best first")
    scores: list[float] = Field(..., description="model scores (popularity counts for a fallback)")
    found: int = Field(..., description="how many items the answer holds: k, or fewer when the user has fewer "
                                        "than k eligible items (seen items excluded); never silently short")
    fallback: Optional[str] = Field(None, description='"popular" when the user is unknown and the server '
                                                      "answers with the most popular items; absent otherwise")


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"users": [0, 1, 2], "k": 50, "exclude_seen": True}]})

    users: list[Union[StrictInt, StrictStr]] = Field(..., min_length=1, description="original user ids")
    k: int = Field(50, description="items per user, 1 .. number of items")
    exclude_seen: bool = Field(True, description="leave out each user's seen items (training + validation)")


class BatchRecommendations(BaseModel):
    k: int
    results: list[Recommendation] = Field(..., description="one per requested user, in request order")


class Similar(BaseModel):
    item: Id
    items: list[Id] = Field(..., description="original item ids, most similar first (the item itself excluded)")
    scores: list[float] = Field(..., description="model scores")
    found: int = Field(..., description="how many items the answer holds: k (at most the number of other items)")


class Health(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    ready: bool
    checksum: Optional[str] = None
    path: Optional[str] = None
    detail: Optional[str] = None


class Info(BaseModel):
    model: str
    bits: int = Field(..., description="bits per dimension; 32 for float32 embeddings")
    dim: int
    n_users: int
    n_items: int
    code_bytes: int = Field(..., description="bytes of the user + item codes as served")
    item_code_bytes: int
    user_code_bytes: int
    float32_bytes: int = Field(..., description="bytes the same embeddings take as float32")
    compression: float
    file_bytes: int
    checksum: str = Field(..., description="sha256 of the artifact (as stored in its preamble)")
    path: str
    format_version: int
    data_fingerprint: str
    loaded_at: float
    load_seconds: float
    reloads: int
    fallback: str
    max_batch: int
    workers: int
    pid: int
    index: dict = Field(default_factory=dict, description="the retrieval engine's own description")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Optional[str] = Field(None, description="artifact to load; default: the path being served")


class ReloadResult(BaseModel):
    reloaded: bool
    path: str
    checksum: str
    previous_checksum: Optional[str]
    seconds: float


#: The error responses the query endpoints document.
ERROR_RESPONSES = {404: {"model": ErrorResponse, "description": "unknown id"},
                   422: {"model": ErrorResponse, "description": "bad parameter (k out of range, non-numeric id, ...)"},
                   503: {"model": ErrorResponse, "description": "no artifact loaded"}}
