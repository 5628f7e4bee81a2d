"""`worker.app:app`, the Celery app of a rebook process (what `celery -A worker` loads).

Importing this module builds the app, so it reads the settings (a bad one exits with one line
naming it); nothing else in the package builds an app at import time.
"""

from worker.celeryapp.app import create_app

app = create_app()

__all__ = ["app"]
