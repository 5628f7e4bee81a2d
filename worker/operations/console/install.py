"""Hooks the console into Flower's route list and its navbar template."""

from __future__ import annotations

import os
from typing import Any

NAV_ANCHOR = "Broker</a>\n        </li>"
NAV_LINK = (
    '\n        <li class="nav-item">\n'
    '          <a class="nav-link" href="{{ reverse_url(\'rebooks\') }}"'
    ' id="rebook-console-link">Rebooks</a>\n        </li>'
)


def install() -> None:
    """Adds the console's routes (ahead of Flower's catch-all 404) and a loader that shows the
    navbar with a "Rebooks" link. Fails loudly if Flower's navbar changed shape."""
    import tornado.template
    from flower import urls

    from worker.operations.console.handlers import routes

    mine = routes()
    if not any(getattr(h, "name", None) == "rebooks" for h in urls.handlers):
        urls.handlers[0:0] = mine

    class NavbarLoader(tornado.template.Loader):
        """Flower's templates, with one link added to its navbar."""

        def _create_template(self, name: str) -> tornado.template.Template:
            if name != "navbar.html":
                return super()._create_template(name)
            path = os.path.join(self.root, name)
            with open(path, "rb") as f:
                text = f.read().decode()
            if NAV_ANCHOR not in text:
                raise RuntimeError("Flower's navbar changed; cannot add the Rebooks link")
            text = text.replace(NAV_ANCHOR, NAV_ANCHOR + NAV_LINK, 1)
            return tornado.template.Template(text, name=name, loader=self)

    settings: Any = urls.settings
    settings["template_loader"] = NavbarLoader(settings["template_path"])
