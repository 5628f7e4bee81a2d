"""rebook's console inside Flower: `/rebooks`, `/rebooks/{id}`, the JSON API under
`/api/rebooks`, and a "Rebooks" link in Flower's navigation (README "Console (in Flower)").

Why inside Flower and not a server of its own: operators already have Flower open, behind its
basic auth; every handler here asks Flower's own `get_current_user()` (the check every Flower
page makes), so there is no second login to run or leak. `install()` is called by the launcher
(`worker/operations/flower.py`) before Flower builds its application. Imports go one way: console →
search, actions, store, flow; nothing below imports the console.
"""

from __future__ import annotations

from worker.operations.console.install import install

__all__ = ["install"]
