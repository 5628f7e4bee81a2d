"""Sentry for the worker and beat, with its Celery integration: it lives beside Celery, the core
keeps only the scrubbing every event goes through (`observability.scrub_event`)."""

from __future__ import annotations

from typing import Any

from worker.core.observability import register_settings_secrets, scrub_event
from worker.core.settings import Settings


def init_sentry(settings: Settings, **extra: Any) -> bool:
    """Sentry with its Celery integration, only when REBOOK_SENTRY_DSN is set."""
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration

    from worker import __version__

    register_settings_secrets(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        release=f"rebook@{__version__}",
        # Sentry Crons cannot monitor sub-minute intervals: the sweep reports itself instead
        # (`observability.sweep_heartbeat`); housekeeping is monitored by the integration.
        integrations=[
            CeleryIntegration(
                monitor_beat_tasks=True, exclude_beat_tasks=["rebook-sweep", "rebook-fanout"]
            )
        ],
        send_default_pii=False,
        include_local_variables=False,
        before_send=scrub_event,
        before_breadcrumb=scrub_event,
        **extra,
    )
    _patched_tracers_for_the_consumer()
    return True


def _patched_tracers_for_the_consumer() -> None:
    """The integration sees a failing task through the tracer `celery.app.trace.build_tracer`
    builds, which `init` wraps. Prefork's children build theirs after the fork, with the wrapped
    one; the threads pool (the Procfile's `io`) and solo run the tracers the consumer builds in
    the main process, with the `build_tracer` it imported by name before `init` ran: without this,
    no step that fails in `io` reaches Sentry (tests/integration/test_ops.py, both pools)."""
    from celery.app import trace
    from celery.worker.consumer import consumer

    consumer.build_tracer = trace.build_tracer
