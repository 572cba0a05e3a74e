"""The `automl` command group and the options and printers its commands share
(a module of its own, so that command modules import it and not each other)."""
from __future__ import annotations

import json
import logging
from typing import Any

import click

from automl_server.settings import SettingsError, get_settings


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _table(rows: list[list[Any]], headers: list[str]) -> None:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


server_option = click.option("--server", envvar="AUTOML_SERVER_URL", help="Service URL (default: the local one).")
token_option = click.option("--token", envvar="AUTOML_TOKEN", help="API token (or AUTOML_TOKEN).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group()
@click.version_option(package_name="automl-server")
def main() -> None:
    """Hardware-aware AutoML service with a device farm."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # schema checks are not news
    try:
        get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
