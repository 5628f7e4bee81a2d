"""The bench's latency phase runs the workers the Procfile starts, read from it: a change to the
Procfile changes what `make bench --latency` measures, never leaves it measuring an old layout."""

from __future__ import annotations

import os

from tests.bench.harness import ROOT
from tests.bench.latency import LAYOUTS, procfile_layout


def test_a_procfile_s_celery_workers_with_their_flags_and_celery_s_defaults() -> None:
    text = "\n".join(
        [
            "# comment: celery -A worker worker -c 9",
            "worker: celery -A worker worker -Q a,b -E -l INFO --concurrency 2 -n events@%h",
            "beat: celery -A worker beat -l INFO",
            "io: celery -A worker worker -Q b -P threads -E --concurrency 32 -n io@%h",
            "bare: celery -A worker worker",
            "flower: python -m worker.operations.flower",
        ]
    )
    assert procfile_layout(text) == [
        ("worker", "a,b", "prefork", 2),
        ("io", "b", "threads", 32),
        ("bare", "rebook.events,rebook.work", "prefork", os.cpu_count()),
    ]


def test_the_latency_phase_measures_the_repository_s_procfile() -> None:
    assert LAYOUTS["threads"] == procfile_layout((ROOT / "Procfile").read_text())
    assert {pool for _, _, pool, _ in LAYOUTS["threads"]} == {"prefork", "threads"}
