"""HTTP errors: one ``{"detail": "..."}`` line with a 4xx, for every request the server refuses."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..index.ids import short_repr


def one_line(text: Any) -> str:
    """``text`` as one line: runs of whitespace (newlines included) become one space."""
    return " ".join(str(text).split())


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` (an int, 4xx) and a one-line ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = one_line(detail)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's validation errors as one line: 400 for malformed JSON, else 422 naming up to 3 fields."""
    errors = list(exc.errors())
    for e in errors:
        if e.get("type") == "json_invalid":
            loc = e.get("loc") or ()
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            reason = (e.get("ctx") or {}).get("error") or e.get("msg", "")
            return JSONResponse({"detail": one_line(f"malformed JSON body: {reason}{where}")}, status_code=400)
    parts = []
    for e in errors[:3]:
        loc = [str(x) for x in (e.get("loc") or ())]
        kind, name = (loc[0], ".".join(loc[1:])) if loc else ("", "")
        if kind == "query":
            label = f"query parameter '{name}'"
        elif kind == "body":
            label = f"body field '{name}'" if name else "request body"
        else:
            label = ".".join(loc) or "request"
        got = ""
        if "input" in e and not isinstance(e["input"], (dict, list)) and e.get("type") != "missing":
            got = f" (got {short_repr(e['input'])})"
        parts.append(f"{label}: {e.get('msg', 'invalid')}{got}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return JSONResponse({"detail": one_line("; ".join(parts) + more)}, status_code=422)
