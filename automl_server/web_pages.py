"""Server-rendered pages. The full product UI arrives with its own issue; this
page shows what the service holds and links to the API docs."""
from __future__ import annotations

from flask import Flask, render_template
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from automl_server.db.models import Dataset, Device, Job


def init_app(app: Flask) -> None:
    @app.get("/")
    def index() -> str:
        from automl_server.api.devices import device_status
        from automl_server.app import state

        s = state()
        with s.db.session() as session:
            datasets = list(session.scalars(select(Dataset).order_by(Dataset.created_at.desc()).limit(50)))
            devices = list(session.scalars(select(Device).options(selectinload(Device.runtimes)).order_by(Device.name)))
            jobs = list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(50)))
            statuses = {d.name: device_status(d, s.settings.heartbeat_timeout_s) for d in devices}
            return render_template("index.html", datasets=datasets, devices=devices, jobs=jobs, statuses=statuses)
