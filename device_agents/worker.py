"""The Celery side of a device agent: consumes ``device.<name>`` only.

Kept apart from the service's Celery app so that a Raspberry Pi installs the
agent without Flask or the service's database layer: it needs only the
broker URL. Measurements run one at a time (solo pool): two ops measured at
once would disturb each other's timings.
"""
from __future__ import annotations

from celery import Celery

from device_agents.protocol import device_queue


def make_agent_celery(broker_url: str, result_backend: str | None = None) -> Celery:
    app = Celery("automl-agent", broker=broker_url, backend=result_backend)
    app.conf.update(
        include=["device_agents.tasks"],
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    import device_agents.tasks  # noqa: F401  (register the shared task)

    return app


def run_worker(app: Celery, device_name: str) -> None:
    app.worker_main(["worker", "--queues", device_queue(device_name), "--pool", "solo", "--concurrency", "1",
                     "--hostname", f"agent-{device_name}@%h", "--loglevel", "INFO", "--without-mingle",
                     "--without-gossip"])
