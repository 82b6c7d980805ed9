"""The README stays a short page, every relative link in it and in docs/ resolves (anchors included), and the test
command it gives is the one CI runs."""

import glob
import os
import re

import pytest
from helpers import ROOT

PAGES = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(path: str) -> list[str]:
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_the_readme_is_at_most_220_lines():
    lines = open(os.path.join(ROOT, "README.md")).read().splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, ROOT) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert relative_links(page) or page.endswith("api.md"), "a page without links: is the pattern right?"
    broken = []
    for target in relative_links(page):
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        if not os.path.exists(resolved) or (anchor and resolved.endswith(".md") and anchor not in anchors(resolved)):
            broken.append(target)
    assert not broken, f"{os.path.relpath(page, ROOT)}: {broken}"


def test_the_readmes_test_command_is_the_one_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    (readme_cmd,) = re.findall(r"^python (-m pytest [^#\n]*?)\s*#", readme, flags=re.M)
    (ci_cmd,) = re.findall(r"^python3? (-m pytest .*)$", ci, flags=re.M)
    assert readme_cmd == ci_cmd.strip()


def test_every_table_between_markers_is_what_the_records_give():
    """README.md and docs/ show each results or speed table as `python scripts/figures.py tables` prints it from
    results/; a number changed by hand in a page, or a record changed without `tables --write`, fails here."""
    pytest.importorskip("rliable")
    from scripts import figures

    shown = {name for page in figures.pages() for name in figures.page_blocks(open(page).read())}
    assert {"five_tasks/tasks", "five_tasks/aggregate"} <= shown
    assert figures.fill_pages(figures.pages(), figures.generated_tables(), write=False) == []
