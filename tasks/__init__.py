"""Thin Celery tasks: decode the message, call the flow, send the next step. One module a step."""
