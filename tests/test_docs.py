"""The README stays short and every page it sends a reader to exists: relative links (and their #anchors),
and every `docs/...` path named in README.md and docs/*.md."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 250
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*[\w/]")  # docs/... as a path, not the end of another one
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(page: Path) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(page: Path) -> set[str]:
    """The #anchors GitHub makes for a page's headings: lower case, punctuation dropped, spaces as hyphens,
    repeated headings numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    for line in prose(page):
        match = HEADING.match(line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def broken_links(page: Path) -> list[str]:
    broken = []
    for line in prose(page):
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{target} (no {resolved})")
            elif anchor and resolved.suffix == ".md" and anchor not in set(anchors(resolved)):
                broken.append(f"{target} (no heading #{anchor} in {resolved})")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_relative_link_exists(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_docs_path_named_exists(page):
    named = {path for path in DOCS_PATH.findall(page.read_text(encoding="utf-8"))}
    assert sorted(path for path in named if not (ROOT / path).exists()) == []


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= MAX_README_LINES


def test_readme_links_every_docs_page():
    linked = {target.partition("#")[0] for line in prose(README) for target in LINK.findall(line)}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert sorted(pages - linked) == []


def test_ci_runs_the_readmes_test_command():
    """.ci/run ends with the README's second quick-start line, so CI runs what the README tells a user to."""
    text = README.read_text(encoding="utf-8")
    quick_start = text.split("## Quick start", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert len(quick_start) == 2
    install_and_run, install_and_test = quick_start
    assert "python -m tools.build_records" in install_and_run and "python -m stoneseg.train" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci.endswith(install_and_test)


def test_the_checks_catch_what_they_should(tmp_path):
    """The checker itself: a missing file, a missing anchor and a docs/ path in prose are found; code blocks,
    web links and good anchors are not reported."""
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text("# A page: `x.py`, again\n## A page: `x.py`, again\n[ok](#a-page-xpy-again-1) [web](https://x.org/y)\n"
                    "[gone](missing.md) [bad anchor](#nowhere)\n```\n[in code](nothing.md)\n```\n", encoding="utf-8")
    assert list(anchors(page)) == ["a-page-xpy-again", "a-page-xpy-again-1"]
    assert [entry.split(" ")[0] for entry in broken_links(page)] == ["missing.md", "#nowhere"]
    assert DOCS_PATH.findall("see docs/records.md. Or mydocs/x, or ./docs/y.") == ["docs/records.md"]
