"""Processes that run next to a device: the agent and (later) profiler backends.

Installable without Flask or Celery's server side: the agent speaks plain
HTTP to the service's REST API.
"""
