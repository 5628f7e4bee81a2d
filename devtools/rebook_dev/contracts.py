"""An import-linter contract type for what `forbidden` cannot say: no import of a submodule of an
external package (`sentry_sdk.integrations.celery`), which the import graph knows only by its
top-level name (`sentry_sdk`). It reads the import lines the graph keeps for each direct import.

Registered in pyproject.toml (`contract_types`); `make lint` runs it with the other contracts.
"""

from __future__ import annotations

import re

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


def names(line: str, module: str) -> bool:
    """Whether an import line imports `module` or one of its submodules: `import a.b.c`,
    `from a.b.c import x`, `from a.b import c` (or a parenthesised list, which may hold it)."""
    line = " ".join(line.split())
    if re.search(rf"\b{re.escape(module)}\b", line):
        return True
    parent, _, last = module.rpartition(".")
    imported = re.match(rf"from {re.escape(parent)} import (.*)", line)
    return imported is not None and (
        imported[1].startswith("(") or re.search(rf"\b{re.escape(last)}\b", imported[1]) is not None
    )


class ForbiddenExternalSubmodules(Contract):
    """source_modules (packages, their descendants included) import none of forbidden_modules,
    dotted names inside external packages, directly (the graph does not follow externals)."""

    type_name = "forbidden_external_submodules"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    forbidden_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        found: list[str] = []
        for source in self.source_modules:  # type: ignore[attr-defined]
            for importer in sorted({source.name} | graph.find_descendants(source.name)):
                for module in self.forbidden_modules:  # type: ignore[attr-defined]
                    top = module.partition(".")[0]
                    if top not in graph.modules:
                        continue
                    for detail in graph.get_import_details(importer=importer, imported=top):
                        if names(detail["line_contents"], module):
                            found.append(
                                f"{importer}:{detail['line_number']} imports {module}: "
                                f"{detail['line_contents']}"
                            )
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["found"]:
            output.print_error(f"-   {line}", bold=False)
        output.new_line()
