"""rebook: rebooks missed webcam sessions on the AdultWork.com developer API.

`celery -A worker ...` finds the app through `worker.celery` (Celery's own lookup order).
"""

__version__ = "0.1.0"
