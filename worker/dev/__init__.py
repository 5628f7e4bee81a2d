"""Dev tools, not production: the sandbox upstream, `rebook demo`, the embedded Redis launcher.

Installed with the `dev` extra (`make demo`/`make test` install it); nothing in production
imports this package (an import-linter contract in `make lint` keeps it so).
"""
