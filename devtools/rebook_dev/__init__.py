"""Dev tools, not production: the sandbox upstream, `rebook demo`, the embedded Redis launcher.

A distribution of its own (`rebook-dev`, devtools/pyproject.toml) that `make install` installs and
the `rebook` wheel and image do not; the CLI finds `demo` and `sandbox` through its `rebook.dev`
entry points, and nothing in production imports it (an import-linter contract keeps it so).
"""
