"""Lets `celery -A worker` find the app: Celery tries `worker.celery` when `worker` has none."""

from worker.app import app

celery = app

__all__ = ["app", "celery"]
