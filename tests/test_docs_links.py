"""Every relative link and image in README.md and docs/*.md points at something that exists.

The README was split into pages under docs/; a moved section or a renamed heading breaks links
silently on GitHub, so this checks each link's file and, for ``#anchor`` links, that the target
page has a heading with that GitHub anchor. Links inside code (fenced blocks, inline code) are
not links, and absolute URLs are not checked (no network here).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
# [text](target) and ![alt](target); the text may hold one level of [brackets] (image links)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The page without code: fenced blocks and inline code spans removed."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a linked heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a page's headings give, with GitHub's -1, -2 suffixes for repeats."""
    seen: Counter[str] = Counter()
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        out.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return out


def links(page: Path) -> list[str]:
    return LINK.findall(_prose(page.read_text(encoding="utf-8")))


def _shown(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def broken(page: Path) -> list[str]:
    """The page's relative links whose file or anchor does not exist, as 'target: why'."""
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: {_shown(dest)} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {_shown(dest)}")
    return problems


def test_slug_follows_github() -> None:
    assert (slug("Trust study: can these maps be trusted?")
            == "trust-study-can-these-maps-be-trusted")
    assert slug("Batch jobs on a cluster (torchrun)") == "batch-jobs-on-a-cluster-torchrun"
    assert slug("SimAM's weights") == "simams-weights"
    assert slug("`make test`") == "make-test"


def test_checker_finds_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Top\n\n[a](p.md#top) ![i](missing.png) `[c](nope.md)`\n\n"
                    "```\n[d](nope.md)\n```\n[e](p.md#gone) [f](https://example.org/x)\n")
    assert links(page) == ["p.md#top", "missing.png", "p.md#gone", "https://example.org/x"]
    assert [p.split(":")[0] for p in broken(page)] == ["missing.png", "p.md#gone"]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_relative_link_exists(page: Path) -> None:
    assert links(page), f"{page.name} has no links at all: the checker is not reading it"
    assert broken(page) == []


def test_readme_keeps_the_commands_and_links_every_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme  # .ci/run runs `make test`
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    # an overview with the studies' headline tables; the rest lives in docs/
    assert len(readme.splitlines()) <= 250
    index = set(links(ROOT / "docs" / "README.md"))
    pages = {p.name for p in PAGES if p.parent.name == "docs" and p.name != "README.md"}
    assert pages <= index, f"pages missing from docs/README.md: {sorted(pages - index)}"
    linked = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    assert {f"docs/{name}" for name in pages} <= linked


def test_cli_reference_names_every_subcommand_and_flag() -> None:
    """docs/cli.md is the CLI reference: a section per subcommand, every flag of its --help."""
    import argparse

    from simam_viz.cli import COMMANDS

    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = []
    for command in COMMANDS:
        parser = argparse.ArgumentParser(prog=f"simam-viz {command.name}")
        command.add_arguments(parser)
        flags = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", parser.format_help())) - {"--help"}
        assert flags, f"no flags read from {command.name} --help"
        assert f"\n## {command.name}\n" in text, f"no section for {command.name}"
        missing += [f"{command.name} {flag}" for flag in sorted(flags) if f"`{flag}" not in text]
    assert missing == []
