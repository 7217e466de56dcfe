"""The design in docs/ stays reachable: every citation of it resolves, and every repository
path that the docs, comments and docstrings name exists.

Comments cite the design as docs/<file>.md#<section> (docs/README.md); a renamed heading or a
moved module would otherwise leave readers at a dead end without anyone noticing. The files
checked are those git knows (tracked, or new and not ignored), read as text.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

TEXT_SUFFIXES = (".py", ".pyi", ".md", ".toml", ".sol", ".proto", ".mjs")
TEXT_NAMES = ("Makefile", ".ci/run")

# docs/<name>.md, optionally with #anchor
DOC_REFERENCE = re.compile(r"(?<![\w/.-])docs/([\w.-]+?\.md)(?:#([\w-]+))?")
# a repository path with a file extension under one of the project's top-level folders
REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:swarmnode|tests|simulations|contracts|protocol|docs)/[\w./-]*\.[A-Za-z0-9]+)"
)
# a relative markdown link inside docs/: [text](file.md#anchor) or [text](#anchor)
MARKDOWN_LINK = re.compile(r"\]\(([\w.-]*\.md)?(?:#([\w-]+))?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")

# Paths a file legitimately names that exist only at run time, never in a checkout.
RUNTIME_PATHS = frozenset(
    {
        "contracts/node_modules/.installed",  # Makefile: stamp of the last npm install
    }
)
# Generated gRPC stubs (docs/architecture.md#generated-code): never edited by hand.
GENERATED = re.compile(r"_pb2(_grpc)?\.pyi?$")
MISSING_DESIGN_FILE = "DESIGN" + ".md"  # spelled apart so this file does not name it


@cache
def text_files() -> tuple[Path, ...]:
    """Tracked files, and new ones git does not ignore, that hold text worth checking."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to list the repository's files with")
    names = sorted({name for name in listed.split("\0") if name})
    return tuple(
        ROOT / name
        for name in names
        if (name.endswith(TEXT_SUFFIXES) or name in TEXT_NAMES) and (ROOT / name).is_file()
    )


@cache
def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@cache
def headings(path: Path) -> tuple[str, ...]:
    """The heading texts of a markdown file, code blocks skipped."""
    found: list[str] = []
    in_code = False
    for line in read(path).splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        match = None if in_code else HEADING.match(line)
        if match:
            found.append(match.group(2))
    return tuple(found)


def anchors(path: Path) -> frozenset[str]:
    return frozenset(slug(h) for h in headings(path))


def docs_files() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def where(path: Path, text: str, offset: int) -> str:
    line = text.count("\n", 0, offset) + 1
    return f"{path.relative_to(ROOT)}:{line}"


def check_doc_target(name: str, anchor: str | None) -> str | None:
    """Why docs/<name>#<anchor> does not resolve, or None when it does."""
    target = DOCS / name
    if not target.is_file():
        return f"docs/{name} does not exist"
    if anchor is not None and anchor not in anchors(target):
        return f"docs/{name} has no heading with the anchor #{anchor}"
    return None


def test_docs_exist_with_an_index() -> None:
    index = DOCS / "README.md"
    assert index.is_file()
    linked = {m.group(1) for m in MARKDOWN_LINK.finditer(read(index)) if m.group(1)}
    unlisted = [p.name for p in docs_files() if p.name != "README.md" and p.name not in linked]
    assert not unlisted, f"docs/README.md does not list: {', '.join(unlisted)}"


def test_every_docs_citation_resolves() -> None:
    broken: list[str] = []
    for path in text_files():
        text = read(path)
        for match in DOC_REFERENCE.finditer(text):
            why = check_doc_target(match.group(1), match.group(2))
            if why is not None:
                broken.append(f"{where(path, text, match.start())}: {why}")
    assert not broken, "citations of docs/ that lead nowhere:\n" + "\n".join(broken)


def test_links_between_docs_resolve() -> None:
    broken: list[str] = []
    for path in docs_files():
        text = read(path)
        for match in MARKDOWN_LINK.finditer(text):
            name, anchor = match.group(1), match.group(2)
            why = check_doc_target(name or path.name, anchor)
            if why is not None:
                broken.append(f"{where(path, text, match.start())}: {why}")
    assert not broken, "links inside docs/ that lead nowhere:\n" + "\n".join(broken)


def test_nothing_names_the_design_file_the_repository_does_not_have() -> None:
    naming = [
        where(path, read(path), read(path).index(MISSING_DESIGN_FILE))
        for path in text_files()
        if MISSING_DESIGN_FILE in read(path)
    ]
    assert not naming, f"cite docs/ instead of {MISSING_DESIGN_FILE}:\n" + "\n".join(naming)


def test_repository_paths_named_in_text_exist() -> None:
    missing: list[str] = []
    for path in text_files():
        if GENERATED.search(path.name):
            continue  # protoc names the .proto relative to protocol/, its include root
        text = read(path)
        for match in REPO_PATH.finditer(text):
            named = match.group(1).rstrip(".")
            if named in RUNTIME_PATHS or (ROOT / named).exists():
                continue
            missing.append(f"{where(path, text, match.start())}: {named}")
    assert not missing, "paths that do not exist in the repository:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", docs_files(), ids=lambda p: p.name)
def test_headings_are_unique_within_a_docs_file(path: Path) -> None:
    seen: dict[str, str] = {}
    clashes = []
    for heading in headings(path):
        anchor = slug(heading)
        if anchor in seen:
            clashes.append(f"{heading!r} and {seen[anchor]!r} share #{anchor}")
        seen[anchor] = heading
    assert not clashes, f"{path.name}: " + "; ".join(clashes)
