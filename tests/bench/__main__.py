"""`python -m tests.bench [--quick] [--sizes 1000,10000,100000] [--million] [--budget-only]
[--json out.json]`."""

from __future__ import annotations

import sys

from tests.bench.run import main

sys.exit(main())
