"""Routes declared once with their pydantic models; the OpenAPI 3 spec is
generated from those declarations, so the document cannot drift from the code.

A view declared with ``@api.operation(...)`` receives the parsed ``body`` and
``query`` models and returns a model (or ``(model, status, headers)``); this
module validates the input, turns pydantic errors into problem documents and
serialises the output.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Blueprint, Response, json, request
from pydantic import BaseModel, ValidationError

from automl_server.api.problems import PROBLEM_MEDIA_TYPE, ProblemError, from_validation_error

_RULE_PARAM = re.compile(r"<(?:[a-z]+:)?([a-zA-Z_]+)>")


@dataclass
class Operation:
    method: str
    rule: str
    summary: str
    tag: str
    operation_id: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | None]
    multipart: dict[str, dict[str, Any]] | None = None
    streams: str | None = None
    description: str = ""
    errors: tuple[int, ...] = ()
    # Request headers the operation reads: (name, required, description).
    headers: tuple[tuple[str, bool, str], ...] = ()


@dataclass
class ApiRegistry:
    prefix: str
    operations: list[Operation] = field(default_factory=list)

    def operation(
        self,
        blueprint: Blueprint,
        rule: str,
        method: str,
        *,
        summary: str,
        tag: str,
        responses: dict[int, type[BaseModel] | None],
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        multipart: dict[str, dict[str, Any]] | None = None,
        streams: str | None = None,
        description: str = "",
        errors: tuple[int, ...] = (),
        headers: tuple[tuple[str, bool, str], ...] = (),
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            op = Operation(
                method=method.lower(), rule=rule, summary=summary, tag=tag, operation_id=view.__name__,
                body=body, query=query, responses=responses, multipart=multipart, streams=streams,
                description=description or (view.__doc__ or "").strip(), errors=errors,
                headers=headers,
            )
            self.operations.append(op)

            @functools.wraps(view)
            def endpoint(**path_args: Any) -> Any:
                kwargs = dict(path_args)
                if query is not None:
                    kwargs["query"] = _parse(query, request.args.to_dict(), "query parameter")
                if body is not None:
                    payload = request.get_json(silent=True)
                    if payload is None:
                        raise ProblemError(
                            415 if not request.is_json else 400,
                            "Body must be JSON",
                            "send a JSON object with Content-Type: application/json",
                            field="body",
                            slug="bad-body",
                        )
                    kwargs["body"] = _parse(body, payload, "body")
                result = view(**kwargs)
                return _serialise(result)

            blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=endpoint, methods=[method.upper()])
            return endpoint

        return decorator

    def spec(self, title: str, version: str) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        schemas: dict[str, Any] = {"Problem": _PROBLEM_SCHEMA}
        for op in self.operations:
            path = self.prefix + _RULE_PARAM.sub(r"{\1}", op.rule)
            item: dict[str, Any] = {
                "operationId": op.operation_id,
                "summary": op.summary,
                "tags": [op.tag],
                "responses": {},
            }
            if op.description:
                item["description"] = op.description
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _RULE_PARAM.findall(op.rule)
            ]
            if op.query is not None:
                query_schema = _schema_of(op.query, schemas)
                required = set(query_schema.get("required", []))
                for name, prop in query_schema.get("properties", {}).items():
                    params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
            if op.method == "post" and op.rule.startswith("/jobs") and op.body is not None:
                params.append({
                    "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"},
                    "description": "Retries with the same key return the first response instead of a new job.",
                })
            for header, header_required, header_doc in op.headers:
                params.append({"name": header, "in": "header", "required": header_required,
                               "schema": {"type": "string"}, "description": header_doc})
            if params:
                item["parameters"] = params
            if op.body is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(op.body, schemas)}},
                }
            if op.multipart is not None:
                item["requestBody"] = {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": {
                        "type": "object", "properties": op.multipart,
                        "required": [k for k, v in op.multipart.items() if v.get("x-required")],
                    }}},
                }
            for status, model in op.responses.items():
                response: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "OK")}
                if model is not None:
                    response["content"] = {"application/json": {"schema": _ref(model, schemas)}}
                if op.streams and status == 200:
                    response["content"] = {op.streams: {"schema": {"type": "string"}}}
                item["responses"][str(status)] = response
            # 401 and 429 (repeated unknown tokens) come from the authentication in front of every route.
            for status in (*op.errors, 401, 422, 429):
                item["responses"].setdefault(str(status), {
                    "description": _STATUS_TEXT.get(status, "Error"),
                    "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                })
            paths.setdefault(path, {})[op.method] = item
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearerToken": {"type": "http", "scheme": "bearer"}},
            },
            "security": [{"bearerToken": []}, {}],
        }


def _parse(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, where) from None


def _serialise(result: Any) -> Any:
    if isinstance(result, Response):
        return result
    status: int = 200
    headers: dict[str, str] = {}
    if isinstance(result, tuple):
        result, status, *rest = result
        headers = rest[0] if rest else {}
    if result is None:
        return Response(status=status, headers=headers)
    payload = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
    return Response(json.dumps(payload), status=status, headers=headers, mimetype="application/json")


def _schema_of(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    return schema


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schemas[model.__name__] = _schema_of(model, schemas)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Too large", 415: "Unsupported media type",
    422: "Invalid input", 429: "Too many requests",
}

_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What was wrong and what would be accepted."},
        "instance": {"type": "string"},
        "field": {"type": "string", "description": "The input that was wrong."},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "field": {"type": "string"}, "detail": {"type": "string"}}}},
    },
    "required": ["type", "title", "status", "detail"],
}
