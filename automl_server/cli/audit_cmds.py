"""`automl audit JOB_ID`: the privacy audit of a finished job, run here against the
service's database and artifacts folder (the machine that serves, as `automl db`)."""
from __future__ import annotations

from typing import Any

import click

from automl_server.cli.base import _echo_json, _table, json_option, main
from automl_server.settings import get_settings


@main.command("audit")
@click.argument("job_id")
@click.option("--samples", type=int, help="Training images attacked (default: the job's setting, else 8).")
@click.option("--iterations", type=int, help="L-BFGS iterations per attack (default 300, as DLG).")
@click.option("--no-defenses", is_flag=True, help="Attack the job's own traffic only.")
@click.option("--minutes", type=float, help="Wall-clock cap of the audit (default 10).")
@json_option
def audit(job_id: str, samples: int | None, iterations: int | None, no_defenses: bool, minutes: float | None,
          as_json: bool) -> None:
    """Rebuild training images from what a finished job's pipeline shares (DLG, iDLG, feature
    inversion), with and without each defense; stored as the job's privacy section."""
    from pydantic import ValidationError

    from automl_server.db.engine import get_database
    from automl_server.jobs.audit_finished import AuditRefused, audit_finished_job

    overrides: dict[str, Any] = {k: v for k, v in {"samples": samples, "iterations": iterations,
                                                    "minutes": minutes}.items() if v is not None}
    if no_defenses:
        overrides["defenses"] = False
    settings = get_settings()

    def report(fraction: float, message: str) -> None:
        if not as_json:
            click.echo(f"[{fraction:4.0%}] {message}", err=True)

    try:
        section = audit_finished_job(get_database(settings.resolved_database_url), settings, job_id, overrides,
                                     report)
    except AuditRefused as exc:
        raise click.ClickException(str(exc)) from None
    except ValidationError as exc:
        error = exc.errors()[0]
        raise click.ClickException(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}") from None
    if as_json:
        _echo_json(section)
        return
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    _table([[r["name"], num(r["psnr_db"], ".1f"), num(r["ssim"], ".3f"), num(r["recognisable"], ".0%"),
             num(r["labels_recovered"], ".0%"), num(r["accuracy_cost"], "+.3f")] for r in section["rows"]],
           ["shared", "PSNR dB", "SSIM", "recognisable", "labels", "accuracy cost"])
    if section["not_run"]:
        click.echo(f"not run within the time limit: {', '.join(section['not_run'])}")
    if section.get("grid"):
        click.echo(f"originals beside rebuilds: {section['grid']}")
