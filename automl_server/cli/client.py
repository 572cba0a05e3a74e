"""A small HTTP client of the REST API for the CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import click
import requests

from automl_server.settings import get_settings


class ApiClient:
    def __init__(self, base_url: str | None = None, token: str | None = None) -> None:
        self.base_url = (base_url or os.environ.get("AUTOML_SERVER_URL") or get_settings().resolved_server_url).rstrip("/")
        self.session = requests.Session()
        token = token or os.environ.get("AUTOML_TOKEN")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}/api/v1{path}"
        try:
            response = self.session.request(method, url, timeout=kwargs.pop("timeout", 60), **kwargs)
        except requests.ConnectionError:
            raise click.ClickException(
                f"cannot reach the service at {self.base_url}; start it with `make run` "
                "or set AUTOML_SERVER_URL / --server"
            ) from None
        if response.status_code >= 400:
            raise click.ClickException(_problem_text(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def paged(self, path: str, key: str, page_size: int = 200,
              params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        token = None
        while True:
            params = {**(params or {}), "page_size": page_size}
            params.pop("page_token", None)
            if token:
                params["page_token"] = token
            page = self.json("GET", path, params=params)
            yield from page[key]
            token = page.get("next_page_token")
            if not token:
                return

    def upload(self, path: Path, name: str | None, description: str) -> Any:
        data = {"description": description}
        if name:
            data["name"] = name
        with path.open("rb") as handle:
            return self.json("POST", "/datasets", files={"file": (path.name, handle)}, data=data, timeout=600)

    def stream_events(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """Events from the Server-Sent Events stream until the job ends."""
        response = self.request("GET", f"/jobs/{job_id}/events/stream", params={"after": after}, stream=True,
                                timeout=(10, 120))
        for raw in response.iter_lines(decode_unicode=True):
            # requests yields bytes when the response names no charset.
            line = raw.decode() if isinstance(raw, bytes) else raw
            if line and line.startswith("data: "):
                payload = json.loads(line[len("data: "):])
                if payload:
                    yield payload


def _problem_text(response: requests.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    field = f" [{problem['field']}]" if problem.get("field") else ""
    return f"{problem.get('title', 'Error')} ({response.status_code}){field}: {problem.get('detail', '')}"
