"""The repository explains itself: no reference in a tracked file points outside a clone.

A clone anywhere must build, test and explain itself. Each tracked text file is scanned for
- absolute paths of a checkout or a home directory (the author's machine, not the reader's);
- the sibling folder the project was started from (``..`` + ``/shared``), which no clone has;
- tracker references ("issue" + number), which no clone can resolve;
- field-case ids (C01, C14b, ...) that docs/field-cases.md does not explain;
- ``docs/<name>.md`` references to a file that does not exist, or, in the form
  ``docs/<name>.md, <Section>`` / ``docs/<name>.md "<Section>"``, to a section it does not have.

The patterns are built by concatenation so that this file does not match itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from repo_files import ROOT, tracked_files

ABSOLUTE = re.compile("(?<![\\w.~$/-])/(" + "|".join(["wo" + "rk", "ho" + "me/[A-Za-z_]", "Us" + "ers/[A-Za-z_]",
                                                      "ro" + "ot/[A-Za-z_.]"]) + ")")
SIBLING = re.compile(re.escape(".." + "/shared") + "|" + re.escape("shared" + "/DESIGN") + "|"
                     + re.escape("shared" + "/DOMAIN"))
TRACKER = re.compile(r"\b" + "iss" + r"ues? ?#?\d+\b", re.IGNORECASE)
CASE_ID = re.compile(r"(?<![\w.-])C(\d\d)([a-z]?)(?![\w-])")
DOC_REF = re.compile(r"docs/([a-z][a-z-]*)\.md(?:, \"?|,? \")?([A-Z][^,;:)\"\n]*)?")


def text_files() -> list[tuple[str, str]]:
    out = []
    for f in tracked_files():
        data = f.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary (pcap, der, ...)
        try:
            out.append((f.relative_to(ROOT).as_posix(), data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return out


FILES = text_files()


def hits(pattern: re.Pattern, skip: set[str] = frozenset()) -> list[str]:
    found = []
    for name, text in FILES:
        if name in skip:
            continue
        for m in pattern.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{name}:{line}: {m.group(0)!r}")
    return found


def test_scan_sees_the_repository():
    names = {n for n, _ in FILES}
    assert {"README.md", "Makefile", "gateway/cli.py", "docs/design.md", "docs/field-cases.md"} <= names
    assert len(FILES) > 100


def test_no_absolute_checkout_or_home_path():
    found = hits(ABSOLUTE)
    assert not found, "absolute paths of a checkout or home directory (use paths relative to the repository):\n" \
        + "\n".join(found)


def test_no_reference_to_the_sibling_folder():
    found = hits(SIBLING)
    assert not found, "references to files outside the repository (copy what is needed into docs/, tests/data/ " \
        "or hil/ with its attribution):\n" + "\n".join(found)


def test_no_tracker_references():
    found = hits(TRACKER)
    assert not found, "tracker references no clone can resolve (cite docs/design.md or docs/domain.md):\n" \
        + "\n".join(found)


def explained_cases() -> set[str]:
    text = (ROOT / "docs" / "field-cases.md").read_text(encoding="utf-8")
    return {m.group(1) + m.group(2) for m in re.finditer(r"^#+ C(\d\d)([a-z]?)\b", text, re.MULTILINE)}


def test_every_case_id_is_explained():
    known = explained_cases()
    assert len(known) >= 18, known
    found = []
    for name, text in FILES:
        if name == "docs/field-cases.md" or not name.endswith((".py", ".md", ".yaml", ".yml", ".toml", ".json")):
            continue
        for m in CASE_ID.finditer(text):
            case = m.group(1) + m.group(2)
            if case not in known and m.group(1) not in known:
                found.append(f"{name}:{text.count(chr(10), 0, m.start()) + 1}: C{case}")
    assert not found, "case ids that docs/field-cases.md does not explain:\n" + "\n".join(found)


def headings(doc: Path) -> list[str]:
    return [h.strip().lower() for h in re.findall(r"^#+ (.+)$", doc.read_text(encoding="utf-8"), re.MULTILINE)]


def test_doc_references_resolve():
    found = []
    for name, text in FILES:
        for m in DOC_REF.finditer(text):
            doc = ROOT / "docs" / f"{m.group(1)}.md"
            where = f"{name}:{text.count(chr(10), 0, m.start()) + 1}"
            if not doc.is_file():
                found.append(f"{where}: {m.group(0)!r}: no such file")
                continue
            section = (m.group(2) or "").strip().lower()
            if section and not any(h.startswith(section) or section.startswith(h) for h in headings(doc)):
                found.append(f"{where}: {m.group(0)!r}: no such section in docs/{m.group(1)}.md")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("sample, pattern, should_match", [
    ("see /" + "work/main/x.py", ABSOLUTE, True),
    ("/" + "home/alice/venv/bin/python", ABSOLUTE, True),
    ("cd /" + "root/hg", ABSOLUTE, True),
    ("/etc/hazard-gateway/keys", ABSOLUTE, False),
    ("/var/lib/hazard-gateway", ABSOLUTE, False),
    (".." + "/shared/real/MANIFEST.md", SIBLING, True),
    ("(iss" + "ue 7)", TRACKER, True),
    ("Issue" + " #12", TRACKER, True),
    ("an issue with the link", TRACKER, False),
])
def test_patterns_catch_what_they_are_for(sample: str, pattern: re.Pattern, should_match: bool):
    """The guard itself can fail: each pattern matches the thing it forbids and not a legitimate path."""
    assert bool(pattern.search(sample)) is should_match
