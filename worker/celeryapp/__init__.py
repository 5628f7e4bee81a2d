"""The Celery glue: the app factory and its policy, the dispatcher, the consumer that reads
hostile frames, the broker transport, and the wiring of one process (`runtime.services`)."""
