"""kombu's own Redis transport tests (`t/unit/transport/test_redis.py` of the installed kombu's
sdist), run against rebook's transport (`worker.celeryapp.broker`): the plugin substitutes
rebook's classes for kombu's, `expected.py` lists each test that differs and why."""
