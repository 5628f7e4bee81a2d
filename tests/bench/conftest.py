"""The benchmark is not a test: `make test` must never collect or run it (`make bench` does)."""

collect_ignore_glob = ["*"]
