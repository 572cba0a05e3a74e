"""Errors as ``application/problem+json`` (RFC 9457).

Every error names what was wrong (``field`` and, for several, ``errors``) and
what would be accepted (``detail``), so a pipeline author can fix the request
without reading our code.
"""
from __future__ import annotations

from typing import Any

from flask import Flask, Response, json, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        errors: list[dict[str, str]] | None = None,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.errors = errors
        self.slug = slug or title.lower().replace(" ", "-")
        self.headers = headers or {}
        self.extensions = extensions

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:automl:problem:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "instance": request.path if request else None,
        }
        if self.field is not None:
            body["field"] = self.field
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extensions)
        return body


def not_found(kind: str, key: str) -> ProblemError:
    return ProblemError(404, "Not found", f"no {kind} {key!r}; list them with GET /api/v1/{kind}s", slug="not-found")


def _loc_to_field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def from_validation_error(exc: ValidationError, where: str) -> ProblemError:
    errors = []
    for err in exc.errors(include_url=False):
        field = _loc_to_field(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field; remove it (see the schema at /api/v1/openapi.json)"
        errors.append({"field": field, "detail": message})
    first = errors[0] if errors else {"field": where, "detail": "invalid"}
    return ProblemError(
        422,
        "Invalid request",
        f"{where} field {first['field']!r}: {first['detail']}",
        field=first["field"],
        errors=errors,
        slug="validation-error",
    )


def problem_response(problem: ProblemError) -> Response:
    response = Response(json.dumps(problem.to_dict()), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(ProblemError)
    def _problem(exc: ProblemError) -> Response:
        return problem_response(exc)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response | HTTPException:
        if isinstance(exc, HTTPException):
            return _http(exc)
        from automl_server.files import disk_full, disk_full_detail
        from automl_server.service_state import state

        if request.path.startswith("/api/") and disk_full(exc, state().settings.data_dir):
            app.logger.error("disk full on %s %s: %s", request.method, request.path, exc)
            return problem_response(ProblemError(
                507, "Insufficient storage",
                disk_full_detail(state().settings.data_dir, f"handling {request.method} {request.path}")
                + "; nothing was stored", slug="disk-full"))
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        if not request.path.startswith("/api/"):
            raise exc
        return problem_response(ProblemError(
            500, "Internal server error",
            f"{exc.__class__.__name__}: {exc}; the server log has the details", slug="internal-error",
        ))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response | HTTPException:
        if not request.path.startswith("/api/"):
            return exc
        status = exc.code or 500
        detail = exc.description or exc.name
        headers: dict[str, str] = {}
        if status == 413:
            detail = "the request body is larger than this server accepts (AUTOML_MAX_UPLOAD_BYTES)"
        elif isinstance(exc, MethodNotAllowed):
            allowed = ", ".join(sorted(exc.valid_methods or []))
            detail = f"method {request.method} is not allowed here; allowed: {allowed}"
            # RFC 9110 15.5.6: a 405 must say which methods the resource has.
            headers["Allow"] = allowed
        elif status == 404:
            detail = f"no API route {request.path}; see /api/v1/openapi.json for the routes"
        elif status == 400:
            detail = (f"{detail} (the request could not be read: check its encoding, its Content-Type and that "
                      "a JSON body is well-formed JSON)")
        return problem_response(ProblemError(status, exc.name, detail, slug=exc.name.lower().replace(" ", "-"),
                                             headers=headers))
