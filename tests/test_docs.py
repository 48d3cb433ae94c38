"""The documentation holds together: every relative link of the README, the pages under docs/ and
the HPC guide leads to a file that exists and, where it names one, to a heading of that file; the
README stays a front page that links every page under docs/."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "HPC_SETUP_GUIDE.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `#` there is a shell comment, a `[x](y)` is code)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(text):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file or heading does not exist, as 'target: why'."""
    problems = []
    for line in prose_lines(page.read_text()):
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                problems.append(f"{target}: no file {linked}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
                problems.append(f"{target}: no heading #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert page.exists(), page
    assert broken_links(page) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[fine](docs/other.md#a-section) [no file](docs/gone.md) [no heading](docs/other.md#elsewhere)\n"
        "[web](https://example.org/x.md) `[code](not/a/link.md)`\n"
        "```\n[in a block](nor/this.md)\n# a comment, not a heading\n```\n"
        "[here](#title) [not here](#a-comment-not-a-heading)\n\n# Title\n"
    )
    assert [problem.split(":")[0] for problem in broken_links(page)] == [
        "docs/gone.md", "docs/other.md#elsewhere", "#a-comment-not-a-heading"]


def test_anchors_follow_github():
    text = "# uni_seg: a page\n## 2. Backbone weights, and nodes\n### Cell classes (`CLASS_SCHEME=bbbc041`)\n## Notes\n## Notes\n"
    assert anchors(text) == {"uni_seg-a-page", "2-backbone-weights-and-nodes",
                             "cell-classes-class_schemebbbc041", "notes", "notes-1"}


def test_readme_is_a_front_page_that_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 180, "the measured detail belongs under docs/, linked from the README"
    linked = {target.partition("#")[0] for line in prose_lines(readme) for target in LINK.findall(line)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in linked, f"docs/{page.name} is not linked from the README"
