"""Starting a device agent: `automl-agent` on a host that has only the agent
installed (``pip install .[agent]``: a Raspberry Pi, a phone's host), and the
same options under `automl agent` in the service's command line.

The agent is told where the service and the broker are (options or
``AUTOML_*`` variables); it reads no service settings and no database. Only
click (which Celery needs anyway) and the standard library are imported
here; the agent's heavier parts load when it starts.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from device_agents.protocol import DEVICE_KINDS, device_queue

# Profiler backends an agent can be pinned to (device_agents.tasks.BACKEND_RUNTIMES names their runtimes).
BACKENDS = ("torch", "torch-cuda", "onnxruntime", "litert", "android")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AgentOptions:
    """What the device is and how it is measured; the connection is passed beside it."""

    name: str
    kind: str = "cpu"
    backend: str | None = None
    adb_host: str | None = None
    adb_port: int = 5555
    adb_serial: str | None = None
    adb_key: str | None = None
    benchmark_binary: str | None = None
    adb_cpu_mask: str = "f0"
    description: str = ""
    no_worker: bool = False
    # Where the device's agent token is kept between runs (None: ~/.automl-agent).
    state_dir: str | None = None
    reuse_latency: bool = False


def device_options(command: F) -> F:
    """The options naming the device and its backend, shared by `automl agent` and `automl-agent`."""
    options = [
        click.option("--device", "--name", "name", required=True, help="Device name (unique in the farm)."),
        click.option("--kind", default="cpu", show_default=True, type=click.Choice(DEVICE_KINDS)),
        click.option("--backend", type=click.Choice(BACKENDS),
                     help="Measure with this backend only (registers just its runtime); "
                          "default: every runtime installed."),
        click.option("--adb-host", help="android: the phone's address for adb over TCP."),
        click.option("--adb-port", type=int, default=5555, show_default=True, help="android: adbd's TCP port."),
        click.option("--adb-serial", help="android: USB serial instead of --adb-host."),
        click.option("--adb-key", help="android: adb private key (default ~/.android/adbkey, created if missing)."),
        click.option("--benchmark-binary", help="android: local benchmark_model built for the phone's ABI."),
        click.option("--adb-cpu-mask", default="f0", show_default=True,
                     help="android: taskset mask the benchmark is pinned to (f0 = big cores of a 4+4 SoC)."),
        click.option("--description", default=""),
        click.option("--no-worker", is_flag=True,
                     help="Only register and heartbeat; do not consume device.NAME."),
        click.option("--state-dir", envvar="AUTOML_AGENT_STATE_DIR",
                     help="Where the device's agent token is kept between runs (or AUTOML_AGENT_STATE_DIR; "
                          "default ~/.automl-agent)."),
        click.option("--reuse-latency", is_flag=True,
                     help="When this agent registers a retired device's name anew, take back its latency tables."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_agent(options: AgentOptions, *, server_url: str, broker_url: str, result_backend: str | None,
              token: str | None, interval_s: float) -> None:
    """Register the device, heartbeat, and (unless ``no_worker``) measure what
    arrives on its queue until SIGTERM; raises click.UsageError for options that cannot work."""
    import threading

    from pathlib import Path

    from device_agents.agent import DEFAULT_STATE_DIR, Agent, detect_runtimes
    from device_agents.tasks import AGENT_CONFIG, BACKEND_RUNTIMES
    from device_agents.worker import make_agent_celery, run_worker

    runtimes = detect_runtimes()
    backend_options: dict[str, object] = {}
    if options.backend == "android":
        if not (options.adb_host or options.adb_serial) or not options.benchmark_binary:
            raise click.UsageError("--backend android needs --adb-host (or --adb-serial) and --benchmark-binary")
        backend_options = {"adb_host": options.adb_host, "adb_port": options.adb_port,
                           "adb_serial": options.adb_serial, "adb_key": options.adb_key,
                           "benchmark_binary": options.benchmark_binary, "cpu_mask": options.adb_cpu_mask}
        # The phone runs LiteRT inside benchmark_model; its version is the binary's, not known here.
        runtimes = [{"name": "litert", "version": ""}]
    elif options.backend:
        runtimes = [r for r in runtimes if r["name"] == BACKEND_RUNTIMES[options.backend]]
        if not runtimes:
            raise click.UsageError(f"backend {options.backend!r} needs runtime "
                                   f"{BACKEND_RUNTIMES[options.backend]!r}, which is not installed here")
    AGENT_CONFIG.update(backend=options.backend, backend_options=backend_options)
    runner = Agent(server_url=server_url, name=options.name, kind=options.kind, token=token, interval_s=interval_s,
                   description=options.description, runtimes=runtimes, reuse_latency=options.reuse_latency,
                   state_dir=Path(options.state_dir) if options.state_dir else DEFAULT_STATE_DIR)
    if options.no_worker:
        runner.install_signal_handlers()
        runner.run()
        return
    heartbeats = threading.Thread(target=runner.run, name="heartbeats", daemon=True)
    heartbeats.start()
    try:
        # The worker owns the main thread and its signals (warm shutdown on SIGTERM).
        run_worker(make_agent_celery(broker_url, result_backend), options.name)
    finally:
        runner.stop_event.set()


@click.command()
@device_options
@click.option("--server", envvar="AUTOML_SERVER_URL", required=True,
              help="The service's URL, e.g. http://automl.lab:8000 (or AUTOML_SERVER_URL).")
@click.option("--broker", envvar="AUTOML_BROKER_URL", required=True,
              help="The Celery broker the service uses, e.g. redis://:pw@automl.lab:6379/0 (or AUTOML_BROKER_URL).")
@click.option("--result-backend", envvar="AUTOML_RESULT_BACKEND",
              help="The service's Celery result backend, if it has one (or AUTOML_RESULT_BACKEND).")
@click.option("--token", envvar="AUTOML_TOKEN", help="API token (or AUTOML_TOKEN).")
@click.option("--heartbeat-interval", envvar="AUTOML_HEARTBEAT_INTERVAL_S", type=click.FloatRange(min=0.1),
              default=5.0, show_default=True, help="Seconds between heartbeats (or AUTOML_HEARTBEAT_INTERVAL_S).")
def main(server: str, broker: str, result_backend: str | None, token: str | None, heartbeat_interval: float,
         **device: Any) -> None:
    """Run a device agent: registers the device with the service, sends
    heartbeats and measures what arrives on the Celery queue device.NAME
    (one measurement at a time)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    options = AgentOptions(**device)
    click.echo(f"agent {options.name}: service {server}, queue {device_queue(options.name)}", err=True)
    run_agent(options, server_url=server, broker_url=broker, result_backend=result_backend or None, token=token,
              interval_s=heartbeat_interval)


if __name__ == "__main__":
    main()
