"""The import-linter contract type for submodules of external packages (rebook_dev/contracts.py)
reads import lines: each form of importing the module is caught, its neighbours are not."""

from __future__ import annotations

import pytest

from rebook_dev.contracts import names

CELERY = "sentry_sdk.integrations.celery"


@pytest.mark.parametrize(
    "line",
    [
        "from sentry_sdk.integrations.celery import CeleryIntegration",
        "import sentry_sdk.integrations.celery",
        "from sentry_sdk.integrations.celery.beat import _patch_beat_apply_entry",
        "from sentry_sdk.integrations import celery",
        "from sentry_sdk.integrations import logging, celery as c",
        "from  sentry_sdk.integrations  import  (",
    ],
)
def test_each_form_of_the_import_is_caught(line: str) -> None:
    assert names(line, CELERY)


@pytest.mark.parametrize(
    "line",
    [
        "import sentry_sdk",
        "from sentry_sdk.crons import capture_checkin",
        "from sentry_sdk.integrations import logging",
        "from sentry_sdk.integrations.celery_extra import x",
        "from sentry_sdk.integrations.logging import celery_name",
    ],
)
def test_other_sentry_imports_are_not(line: str) -> None:
    assert not names(line, CELERY)
