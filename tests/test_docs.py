"""The documentation holds together: every relative link in README.md and docs/ names a file (and heading)
that exists, every document the code names is in the repository, and README.md stays a front page."""

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_LIMIT = 12_288  # bytes: the front page; everything else lives in docs/

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`]*`")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md"]


def prose_lines(path: Path, keep_code: bool = False):
    """(line number, text) of the lines outside fenced code blocks, inline code removed unless kept."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line if keep_code else CODE_SPAN.sub("", line)


def slug(heading: str) -> str:
    # GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), each
    # space a hyphen.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path, keep_code=True):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """'file:line: target (why)' for each relative link of `path` whose file or heading is missing."""
    problems = []
    for number, line in prose_lines(path):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, fragment = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}:{number}: {target}"
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                problems.append(f"{where} (no heading #{fragment} in {dest.relative_to(ROOT)})")
    return problems


def test_every_relative_link_resolves():
    problems = [p for f in markdown_files() for p in broken_links(f)]
    for path in markdown_files():
        for number, line in prose_lines(path, keep_code=True):
            problems += [f"{path.relative_to(ROOT)}:{number}: {m.group(0)} (outside the repository)"
                         for m in OUTSIDE.finditer(line)]
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_missing_file_and_a_missing_heading(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Real heading\n## Tokenizers (`data.tokenizer`)\n## Real heading\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#real-heading) [b](other.md#tokenizers-datatokenizer) "
                    "[c](other.md#real-heading-1) [d](https://example.com/x.md)\n"
                    "`[e](in-code.md)`\n```\n[f](fenced.md)\n```\n"
                    "[g](missing.md) ![h](other.md#no-such-heading)\n")
    assert [p.split(": ", 1)[1] for p in broken_links(page)] == [
        "missing.md (no such file)", "other.md#no-such-heading (no heading #no-such-heading in other.md)"]


def test_readme_is_a_front_page():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


# A document the code names: a page of docs/ or benchmarks/, or a SPEC/DESIGN document outside the repo.
NAMED_DOC = re.compile(r"(?<![\w/.])(?:docs|benchmarks)/[\w./-]*\.md\b")
NAMED_SECTION = re.compile(r"((?:docs|benchmarks)/[\w./-]*\.md),? \"([^\"]+)\"")
OUTSIDE = re.compile(r"\bSPEC\b\s*§|\b" + "DES" + r"IGN\.md\b|\b" + "SP" + r"EC\.md\b")


@pytest.mark.parametrize("folder", ["gptjax", "tests", "experiments", "benchmarks"])
def test_code_names_only_documents_in_the_repository(folder):
    problems = []
    files = [*sorted((ROOT / folder).rglob("*.py")), ROOT / "Makefile", ROOT / "pyproject.toml"]
    for path in files if folder == "gptjax" else sorted((ROOT / folder).rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            problems += [f"{where}: {m.group(0)} (outside the repository)" for m in OUTSIDE.finditer(line)]
            for name in NAMED_DOC.findall(line):
                if not (ROOT / name).exists():
                    problems.append(f"{where}: {name} (no such file)")
            for name, heading in NAMED_SECTION.findall(line):  # a page and its heading in quotes
                if (ROOT / name).exists() and slug(heading) not in anchors(ROOT / name):
                    problems.append(f"{where}: {name} has no heading {heading!r}")
    assert not problems, "\n".join(problems)
