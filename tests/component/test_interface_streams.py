"""The dead-letter stream's fields as the store writes them are those docs/interface.md lists."""

from __future__ import annotations

import re

from tests.unit.test_interface_doc import TICKED, compare, sections
from worker.core.store import Store


def test_deadletter_fields_are_on_the_interface_page(store: Store) -> None:
    store.outcomes.deadletter(
        "bad event", {"event_id": 5}, task_id="t-1", task="rebook.request", raw="{}"
    )
    entry = store.outcomes.deadletters(count=1)[0]
    paragraph = sections()["Streams"].split("**`{prefix}deadletter`**", 1)[1].split("\n\n")[0]
    listed = re.search(r"Fields\s(.+?)\swhen", paragraph, flags=re.S)
    assert listed, "no 'Fields ... when' in the dead-letter paragraph"
    written = set(entry) - {"id"}  # the stream entry's id, not a field
    compare("the dead-letter stream's fields", written, set(TICKED.findall(listed[1])))
