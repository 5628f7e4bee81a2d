"""Flower's own unit tests (from its sdist) with rebook's launcher patches applied.

Run as a script, by path, from the unpacked sdist: `python .../flower_suite.py SDIST_DIR`.
Flower's test package is also called `tests`, so this file is never imported as part of
rebook's; it puts the sdist first on `sys.path` and patches Flower exactly as
`python -m worker.operations.flower` does (the authenticated `/metrics` route, the console's
routes ahead of Flower's catch-all, the navbar loader) before any test builds Flower's app.
Exit status 0 when every test passes; the last line is `flower-suite: ran N, failed F`.
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path


def patch_flower() -> list[str]:
    """The launcher's patches, checked to have landed (a silent no-op would prove nothing)."""
    from flower import urls

    from worker.operations.console.install import install
    from worker.operations.flower import METRICS_ROUTE, close_metrics

    close_metrics()
    install()
    applied = []
    metrics = [h for h in urls.handlers if isinstance(h, tuple) and h[0] == METRICS_ROUTE]
    if metrics and metrics[0][1].__name__ == "AuthenticatedMetrics":
        applied.append("metrics-auth")
    if any(getattr(h, "name", None) == "rebooks" for h in urls.handlers):
        applied.append("console-routes")
    if type(urls.settings.get("template_loader")).__name__ == "NavbarLoader":
        applied.append("navbar")
    return applied


def main(argv: list[str]) -> int:
    root = Path(argv[1]).resolve()
    sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "tests" or m.startswith("tests.")]:
        del sys.modules[name]  # rebook's `tests` package must not shadow Flower's
    applied = patch_flower()
    print(f"flower-suite: patches applied: {', '.join(applied) or 'none'}", flush=True)
    suite = unittest.defaultTestLoader.discover(
        start_dir=str(root / "tests" / "unit"), pattern="test_*.py", top_level_dir=str(root)
    )
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
    failed = len(result.failures) + len(result.errors)
    for test, _ in [*result.failures, *result.errors]:
        print(f"flower-suite: FAILED {test.id()}", flush=True)
    print(f"flower-suite: ran {result.testsRun}, failed {failed}", flush=True)
    return 0 if failed == 0 and len(applied) == 3 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
