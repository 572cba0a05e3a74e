"""The one Celery app. Tasks are ``@shared_task`` in ``automl_server.jobs.tasks``.

Queues: ``default`` (light work: validation, bookkeeping), ``search``
(ProxylessNAS; give it the GPU workers) and ``device.<name>`` (work that must
run next to one device, consumed by that device's agent host; its name and
the tasks sent there are the contract in ``device_agents.protocol``).
"""
from __future__ import annotations

from celery import Celery
from kombu import Queue

from automl_server.settings import Settings, get_settings, settings_of


class ServiceCelery(Celery):
    """The service's Celery app: it carries the settings its tasks read (``settings_of``)."""

    automl_settings: Settings | None = None


def make_celery(settings: Settings, *, eager: bool = False) -> Celery:
    app = ServiceCelery("automl", broker=settings.resolved_broker_url, backend=settings.resolved_result_backend)
    app.conf.update(
        include=["automl_server.jobs.tasks", "automl_server.profiling", "automl_server.webhooks"],
        task_default_queue="default",
        task_queues=[Queue("default"), Queue("search")],
        # Declare device.<name> queues on demand instead of listing every device here.
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # acks_late + idempotent tasks: a worker that dies mid-stage leaves the
        # message on the broker, and the stage is run again from its checkpoint.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600,
        worker_hijack_root_logger=False,
        task_always_eager=eager,
        task_eager_propagates=eager,
    )
    app.automl_settings = settings
    import automl_server.jobs.tasks  # noqa: F401  (register the shared tasks)
    import automl_server.profiling  # noqa: F401
    import automl_server.webhooks  # noqa: F401

    return app


# settings_of lives in settings.py (tasks import it from there, so that no
# task module imports this one, which imports them all to register them).
__all__ = ["make_celery", "settings_of"]
