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
    # The media type(s) of a 200 that is not JSON (a file, an event stream).
    streams: str | tuple[str, ...] | None = None
    description: str = ""
    errors: tuple[int, ...] = ()
    # Request headers the view reads (name -> parameter fields: schema, description).
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # For a text/event-stream: the model of each event's JSON data.
    stream_event: type[BaseModel] | None = None
    # The token scope the operation needs (automl_server.auth): "read", "submit", "admin" or
    # "agent" (the agent of the device the request names); None: open without a token.
    scope: str | None = None


# Called before the view with (operation, device named by the request): raises a problem if
# the caller may not. Set by api/auth.py; None (tests of the registry alone) checks nothing.
Authorize = Callable[[Operation, "str | None"], None]


@dataclass
class ApiRegistry:
    prefix: str
    operations: list[Operation] = field(default_factory=list)
    authorize: Authorize | None = None

    def operation(
        self,
        blueprint: Blueprint,
        rule: str,
        method: str,
        *,
        summary: str,
        tag: str,
        responses: dict[int, type[BaseModel] | None],
        scope: str | None,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        multipart: dict[str, dict[str, Any]] | None = None,
        streams: str | tuple[str, ...] | None = None,
        description: str = "",
        errors: tuple[int, ...] = (),
        headers: dict[str, dict[str, Any]] | None = None,
        stream_event: type[BaseModel] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
            op = Operation(
                method=method.lower(), rule=rule, summary=summary, tag=tag, operation_id=view.__name__,
                body=body, query=query, responses=responses, multipart=multipart, streams=streams,
                description=description or (view.__doc__ or "").strip(), errors=errors,
                headers=dict(headers or {}), stream_event=stream_event, scope=scope,
            )
            self.operations.append(op)

            @functools.wraps(view)
            def endpoint(**path_args: Any) -> Any:
                kwargs = dict(path_args)
                # The agent scope needs the device's name, which a registration carries in its body.
                late = scope == "agent" and "name" not in path_args
                if self.authorize is not None and not late:
                    self.authorize(op, path_args.get("name"))
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
                if self.authorize is not None and late:
                    self.authorize(op, getattr(kwargs.get("body"), "name", None))
                result = view(**kwargs)
                return _serialise(result)

            blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=endpoint, methods=[method.upper()])
            return endpoint

        return decorator

    def spec(
        self, title: str, version: str, *, auth_required: bool = True, public: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The OpenAPI document. ``auth_required``: whether this server asks for a token
        (local mode does not); ``public``: operation ids open without one."""
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
            if op.scope is not None:
                item["x-required-scope"] = "agent:DEVICE" if op.scope == "agent" else op.scope
                needs = ("the agent:DEVICE scope of the device it names (or admin)" if op.scope == "agent"
                         else f"the {op.scope} scope" + ("" if op.scope == "admin" else " (or admin)"))
                if auth_required:
                    item["description"] = (item.get("description", "") + f"\n\nToken needs {needs}.").strip()
            if op.operation_id in public:
                item["security"] = []
            params = _parameters(op, schemas)
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
                    media = (op.streams,) if isinstance(op.streams, str) else op.streams
                    response["content"] = {m: {"schema": _stream_schema(op, m, schemas)} for m in media}
                item["responses"][str(status)] = response
            for status in _error_statuses(op, auth_required and op.operation_id not in public):
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
            # Local mode (loopback, AUTOML_AUTH_MODE=auto) asks for no token; say so, or clients send one for nothing.
            "security": [{"bearerToken": []}] if auth_required else [],
        }


def _parameters(op: Operation, schemas: dict[str, Any]) -> list[dict[str, Any]]:
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
            "name": "Idempotency-Key", "in": "header", "required": False,
            "schema": {"type": "string", "maxLength": 200},
            "description": "Retries with the same key return the first response instead of a new job.",
        })
    for name, fields in op.headers.items():
        params.append({"name": name, "in": "header", "required": False, **fields})
    return params


def _error_statuses(op: Operation, needs_token: bool) -> list[int]:
    """The problem statuses an operation can answer besides its own ``errors``:
    what the shared request handling (this module, problems.py, auth.py) raises."""
    statuses = list(op.errors)
    takes_input = op.body is not None or op.multipart is not None
    if takes_input or op.query is not None or op.headers:
        statuses += [400, 422]  # unreadable input (400) or input the models refuse (422)
    if takes_input:
        statuses.append(415)  # no body, or not of the declared media type
    if op.multipart is not None:
        statuses.append(413)
    if needs_token:
        # A missing or unknown token (401), a token without the operation's scope (403),
        # 429 once failed attempts are slowed (login_throttle).
        statuses += [401, 403, 429]
    if op.method not in ("get", "head", "options"):
        statuses.append(403)  # a browser session's write without its CSRF header (api/ui.py)
    statuses.append(421)  # a Host that is not a name of this server, when no token is required (host_check.py)
    return sorted(set(statuses))


def _stream_schema(op: Operation, media: str, schemas: dict[str, Any]) -> dict[str, Any]:
    """Open API 3.1 has the schema of an event stream describe one event (3.2's itemSchema);
    a JSON file is an object, any other file a string of bytes."""
    if media == "application/json":
        return {"type": "object"}
    if media != "text/event-stream" or op.stream_event is None:
        return {"type": "string"}
    return {
        "type": "object",
        "description": "One Server-Sent Event: one of the job's events, then a last event `end` once the job has "
                       "finished.",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "description": "The event's kind, or `end`."},
            "id": {"type": "string", "description": "The event id; reconnect with it as Last-Event-ID."},
            "retry": {"type": "integer", "minimum": 0},
            "data": {
                "type": "string", "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_ref(op.stream_event, schemas), {"type": "object", "maxProperties": 0}]},
            },
        },
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
    # pydantic writes the JSON itself (in Rust): for a page of 50 jobs several
    # times faster than model_dump() and then json.dumps() (bench/bench_api_load.py).
    text = result.model_dump_json() if isinstance(result, BaseModel) else json.dumps(result)
    return Response(text, status=status, headers=headers, mimetype="application/json")


def _schema_of(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    return schema


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schemas[model.__name__] = _schema_of(model, schemas)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_STATUS_TEXT = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No content", 400: "Bad request (unreadable input)",
    401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Too large",
    415: "Unsupported media type",
    421: "Misdirected request (the Host header is not a name of this server; see AUTOML_ALLOWED_HOSTS)",
    422: "Invalid input", 429: "Too many requests", 503: "Service unavailable",
    507: "Insufficient storage (the data directory's disk is full)",
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
