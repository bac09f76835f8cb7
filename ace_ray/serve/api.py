"""The HTTP contract of the search service: request bodies, their limits, and 4xx answers that name the
field at fault. Bodies are read and parsed here (not by FastAPI) so that size, JSON syntax and every field
get their own message, and nothing a client sends can reach the handlers unchecked."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError


class BadRequest(Exception):
    """A client error: HTTP ``status`` with the offending ``field`` named."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": [{"field": self.field, "message": self.message}]}, self.status)


class SearchRequest(BaseModel):
    """``POST /search``: the query text, how many products, and optionally a leaf category."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query: str
    k: int = 10
    category: str | None = None


class SimilarRequest(BaseModel):
    """``POST /similar``: the products nearest to ``product_id``'s embedding."""

    model_config = ConfigDict(extra="forbid", strict=True)
    product_id: str
    k: int = 10


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) once it passes ``max_bytes``, before the rest is read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, "body", f"{int(declared):,} bytes; at most {max_bytes:,} are accepted")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(
                413, "body", f"more than {max_bytes:,} bytes; at most {max_bytes:,} are accepted"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def parse(body: bytes, model: type[BaseModel]) -> BaseModel:
    """``body`` as a JSON object of ``model``; the first bad field becomes a 422 naming it."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(400, "body", f"not JSON ({exc}); send a JSON object such as "
                                      '{"query": "red dress", "k": 10}') from None  # fmt: skip
    if not isinstance(obj, dict):
        raise BadRequest(422, "body", f"must be a JSON object, got {type(obj).__name__}")
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; accepted: {', '.join(model.model_fields)}"
        elif err["type"] == "missing":
            msg = "required"
        else:
            msg = f"{err['msg']} (got {json.dumps(err.get('input'))[:80]})"
        raise BadRequest(422, field, msg) from None


def check_k(k: int, max_k: int) -> None:
    if not 1 <= k <= max_k:
        raise BadRequest(422, "k", f"must be between 1 and {max_k}, got {k}")


def check_query(query: str, max_chars: int) -> str:
    """The query stripped; empty or longer than ``max_chars`` is a 422."""
    q = query.strip()
    if not q:
        raise BadRequest(422, "query", "must not be empty")
    if len(q) > max_chars:
        raise BadRequest(422, "query", f"{len(q):,} characters; at most {max_chars:,}")
    return q
