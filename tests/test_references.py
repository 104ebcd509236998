"""What the code and the pages cite exists in the repository: every file a .py file names, every
section it names in a page (`docs/wgan.md, "Departures from the paper"`), and every anchor a page
links to (`usage.md#resume`). A reader who follows a reference finds it."""

import re

from conftest import ROOT

CODE = sorted([*ROOT.glob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").glob("*.py")])
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path in the repository, as code names it: docs/x.md, benchmarks/y.py, results/z.jsonl, README.md, ...
FILE = re.compile(
    r"(?<![\w/.])((?:docs|benchmarks|results|tests)/[\w./-]*\w\.(?:md|py|jsonl|png|txt)|[A-Z]+\.md)\b"
)
SECTION = re.compile(r'((?:docs/)?[\w-]+\.md), "([^"]+)"')


def slug(heading):
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(page):
    return [line.lstrip("#").strip() for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line)]


def test_every_file_and_section_the_code_names_exists():
    missing = []
    for path in CODE:
        if path.name == "test_references.py":
            continue  # its examples
        text = path.read_text()
        for name in set(FILE.findall(text)):
            if "*" in name or name.startswith("results/"):
                continue  # a pattern, or records a benchmark appends to (made by its first run)
            if not (ROOT / name).exists():
                missing.append(f"{path.relative_to(ROOT)}: {name}")
        for cite in re.findall(r"\(README(?!\.md)\b[^)]*\)", text):  # (README, "Levers tried")
            missing.append(f'{path.relative_to(ROOT)}: {cite}: cite the page and section, docs/x.md, "..."')
        for page, section in SECTION.findall(text):
            target = ROOT / (page if "/" in page else f"docs/{page}")
            if not target.exists() or section not in headings(target):
                missing.append(f"{path.relative_to(ROOT)}: {page}, {section!r}")
    assert not missing


def test_every_anchor_a_page_links_to_is_a_heading_there():
    broken = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)\s#]*)#([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            linked = (page.parent / target) if target else page
            if not linked.exists() or anchor not in {slug(h) for h in headings(linked)}:
                broken.append(f"{page.relative_to(ROOT)}: {target}#{anchor}")
    assert not broken


def test_nothing_cites_a_file_that_is_not_in_the_repository():
    """The contract a contributor keeps is CONTRIBUTING.md; the code and pages cite nothing outside."""
    for path in [*CODE, *PAGES]:
        if path.name == "test_references.py":
            continue
        text = path.read_text()
        assert "CONVENTIONS.md" not in text, path.relative_to(ROOT)


def test_pages_are_reference_not_lab_notes():
    """Model pages stay short enough to read as reference; the history lives in results/ as records."""
    for page in PAGES:
        text = page.read_text()
        for note in ("Early runs", "half-speed", "commit unknown", "/tmp/"):
            assert note not in text, f"{page.relative_to(ROOT)}: {note!r}"
    models = ["gan_gaussian", "gan_mnist", "dcgan", "dcgan_classwise", "wgan", "wgan_gp", "sn_dcgan"]
    for name in models:
        assert len((ROOT / "docs" / f"{name}.md").read_text()) <= 12_000, name
