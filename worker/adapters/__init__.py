"""Adapters to the outside world: the upstream's HTTP API, OAuth tokens, the shared rate limit,
presence, the outcome webhook. They implement the core's Protocols and know no Celery."""
