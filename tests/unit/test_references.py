"""Every file the README, the RUNBOOK, docs/ and the code's comments cite is in the repo.

A reader who clones the repository has only what is in it: a citation of a file that moved, or of
one that never was here, sends them nowhere. Checked: repo-relative paths (`worker/...`,
`tasks/...`, `tests/...`, `ops/...`, `docs/...`, `devtools/...`), dotted module names
(`worker.core.keys`, `rebook_dev.sandbox`, with the name after the module when one follows),
README and RUNBOOK sections cited by title, and relative Markdown links with their anchors.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("worker", "tasks", "tests", "ops", "docs", "devtools")
PACKAGES = {"worker": ROOT, "tasks": ROOT, "rebook_dev": ROOT / "devtools"}
"""Where each top-level package's folder is (the dev tools are a distribution of their own)."""
TOP_FILES = {"README.md", "Makefile", "Procfile", "pyproject.toml"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".cfg", ".lua", ".conf", ".env", ""}

PATH = re.compile(
    r"(?<![\w./-])(`?)((?:" + "|".join(TOP) + r")/[A-Za-z0-9_.{}*<>/-]*[A-Za-z0-9_*}>/])"
)
"""A path: with a file's extension or a trailing `/`, or any in backticks (`worker/core`); bare
words like "worker/scheduler" in prose are not."""
MODULE = re.compile(r"(?<![\w./-])((?:worker|tasks|rebook_dev)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
NOT_MODULE = re.compile(r"\.(?:log|ya?ml|json|txt|md|py|toml|lua|__\w+__)$")
"""`worker.log`, `worker.yaml` (file names), `worker.__file__`: not module citations."""
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"[*{}<>]|/(?:KIND|NAME|ID)\.\w+$")
"""`docs/schemas/KIND.json`, `tests/bench/*.py`, `tests/{unit,component}`: a pattern, not a file."""


@cache
def tracked() -> list[Path]:
    """The files a clone has (git's list, new files too: never the venv or caches)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [ROOT / name for name in out.split("\0") if name]


def scanned() -> list[Path]:
    """The prose a reader follows: README, everything under docs/ and ops/, the sources (their
    comments and docstrings) of the packages and tests, the Makefile, Procfile, pyproject.toml
    and CI."""
    return [
        p
        for p in tracked()
        if p.is_file()
        and p.suffix in TEXT_SUFFIXES
        and (str(p.relative_to(ROOT)) in TOP_FILES or p.relative_to(ROOT).parts[0] in (*TOP, ".ci"))
    ]


@cache
def _prose(path: Path) -> str:
    """What a person reads in a file: of Python source its comments and strings (a variable
    named `worker` is not a citation), of anything else all of it."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix != ".py":
        return text
    kinds = (tokenize.COMMENT, tokenize.STRING)
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return "\n".join(tok.string for tok in tokens if tok.type in kinds)


SECTION = re.compile(r"\b(README|RUNBOOK)(?:\.md)?(?:'s)? \"([^\"]+)\"")
"""`README "Shadow mode"`, `RUNBOOK "Dead letters"`: a section by its heading or bold lead-in."""
DOCS = {"README": "README.md", "RUNBOOK": "ops/RUNBOOK.md"}


def _plain(text: str) -> str:
    """Lower case, one space between words, a comment's `#` at a line break gone."""
    return re.sub(r"\s+", " ", re.sub(r"\n\s*#", " ", text)).strip(" .:").lower()


@cache
def titles(doc: str) -> tuple[str, ...]:
    """The headings of a document and the bold words that open its paragraphs."""
    text = (ROOT / DOCS[doc]).read_text(encoding="utf-8")
    found = re.findall(r"^#+ (.+)$", text, flags=re.M) + re.findall(r"\*\*([^*]+)\*\*", text)
    return tuple(_plain(t) for t in found)


def unresolved_sections() -> dict[str, list[str]]:
    """Each scanned file with the README/RUNBOOK sections it cites that have no such title."""
    found: dict[str, list[str]] = {}
    for path in scanned():
        bad = [
            f'{doc} "{_plain(title)}"'
            for doc, title in SECTION.findall(_prose(path))
            if not any(t.startswith(_plain(title)) for t in titles(doc))
        ]
        if bad:
            found[str(path.relative_to(ROOT))] = sorted(set(bad))
    return found


def _is_path(candidate: str, tick: str) -> bool:
    last = candidate.rstrip("/").rsplit("/", 1)[-1]
    if PLACEHOLDER.search(candidate):
        return False
    return bool(tick) or candidate.endswith("/") or "." in last


def _exists(rel: str) -> bool:
    """In the repo, or a file the reader makes that git ignores (`ops/rebook.env`)."""
    if (ROOT / rel.rstrip("/")).exists():
        return True
    ignored = subprocess.run(["git", "check-ignore", "-q", rel], cwd=ROOT, check=False)
    return ignored.returncode == 0


@cache
def _names(module: Path) -> frozenset[str]:
    """Top-level names a module defines or imports (what `module.NAME` may cite)."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def _module_resolves(dotted: str) -> bool:
    """`worker.core.keys` is a module or package; `worker.core.keys.Keys` one followed by a name
    it defines (`Keys.record`: only the first name after the module is checked)."""
    if NOT_MODULE.search(dotted):
        return True
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        base = PACKAGES[parts[0]].joinpath(*parts[:end])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not module.is_file():
            continue
        if end == len(parts):
            return True
        name = parts[end]
        if base.is_dir() and ((base / name).is_dir() or (base / f"{name}.py").is_file()):
            return True
        return name in _names(module)
    return False


@cache
def anchors(page: Path) -> frozenset[str]:
    """The anchors GitHub gives a Markdown page: its headings' slugs (`-1` for a repeat) and
    explicit `<a id="...">`; headings inside code blocks are not headings."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    found = set(re.findall(r"<a id=\"([^\"]+)\"", text))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def _links(path: Path, text: str) -> list[str]:
    """Relative Markdown links that lead nowhere: no such file, or no such heading in it."""
    missing = []
    for link in LINK.findall(text):
        target, _, anchor = link.partition("#")
        if "://" in target or target.startswith("mailto:"):
            continue
        page = (path.parent / target).resolve() if target else path
        if not page.exists() or (anchor and page.suffix == ".md" and anchor not in anchors(page)):
            missing.append(link)
    return missing


def unresolved() -> dict[str, list[str]]:
    """Each scanned file with the citations in it that lead nowhere."""
    found: dict[str, list[str]] = {}
    for path in scanned():
        rel = str(path.relative_to(ROOT))
        text = _prose(path)
        bad = {p for tick, p in PATH.findall(text) if _is_path(p, tick) and not _exists(p)}
        bad |= {m for m in MODULE.findall(text) if not _module_resolves(m)}
        if path.suffix == ".md":
            bad |= set(_links(path, text))
        bad.discard(rel)
        if bad:
            found[rel] = sorted(bad)
    return found


def test_the_scan_reads_the_docs_and_finds_citations() -> None:
    names = {str(p.relative_to(ROOT)) for p in scanned()}
    assert {"README.md", "ops/RUNBOOK.md", "docs/interface.md"} <= names
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(PATH.findall(readme)) > 20, "the path pattern no longer matches the README"
    assert "worker.core.keys" in MODULE.findall("see `worker.core.keys` for the layout")


def test_every_cited_path_exists_in_the_repo() -> None:
    missing = unresolved()
    listing = "\n".join(f"  {f}: {', '.join(paths)}" for f, paths in sorted(missing.items()))
    assert not missing, f"citations of files or modules not in the repo:\n{listing}"


def test_every_cited_section_of_the_readme_and_the_runbook_exists() -> None:
    assert len([m for p in scanned() for m in SECTION.findall(_prose(p))]) > 20, "scan broken"
    missing = unresolved_sections()
    listing = "\n".join(f"  {f}: {', '.join(cited)}" for f, cited in sorted(missing.items()))
    assert not missing, f"citations of sections that are not there (renamed or gone):\n{listing}"


def test_the_runbooks_list_of_ops_files_is_whole() -> None:
    """Every file under ops/ is in the RUNBOOK's "Files in ops/" table (by its path under ops/,
    or by its folder's row), and every name in the table's first column is there."""
    runbook = (ROOT / "ops" / "RUNBOOK.md").read_text(encoding="utf-8")
    table = runbook.split("### Files in ops/", 1)[1].split("\n#", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    named = {n for row in rows for n in re.findall(r"`([^`\s]+)`", row.split(" | ")[0])}
    files = [p.relative_to(ROOT / "ops") for p in tracked() if p.is_relative_to(ROOT / "ops")]
    unlisted = sorted(
        str(f)
        for f in files
        if f.name not in {".gitignore", "RUNBOOK.md"}
        and str(f) not in named
        and f"{f.parts[0]}/" not in named
    )
    assert not unlisted, f"ops/ files missing from the RUNBOOK's 'Files in ops/': {unlisted}"
    gone = sorted(n for n in named if not (ROOT / "ops" / n).exists())
    assert not gone, f"the RUNBOOK's 'Files in ops/' names files that are not there: {gone}"


def test_nothing_cites_files_outside_the_repo() -> None:
    """The design notes beside the repo, the upstream's notes and seed files are not in a clone:
    docs/interface.md is the public interface, README "The upstream" what we know of the API."""
    outside = re.compile(r"\.\./shared|DESIGN\.md|UPSTREAM\.md|RescheduleMadeBooking\.txt")
    hits = {
        str(p.relative_to(ROOT)): sorted(set(outside.findall(p.read_text(errors="replace"))))
        for p in scanned()
        if p != Path(__file__).resolve() and outside.search(p.read_text(errors="replace"))
    }
    assert not hits, f"citations of files a clone does not have: {hits}"
