"""`make bench` / `python -m tests.bench`: rebook against plain Celery, side by side on loopback."""
