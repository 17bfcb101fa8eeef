"""``python -m gateway.hazard --people N --substance NAME=TONNES ...``: the grade command without the CLI."""

from __future__ import annotations

import argparse
import sys

from gateway.hazard import grade_command


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gateway.hazard",
                                description="GB 18218-2018 identification (S) and grading (R) of one unit")
    p.add_argument("grade", nargs="?", help="optional sub-command word 'grade'")
    p.add_argument("--people", type=int, required=True, help="people within 500 m outside the unit boundary")
    p.add_argument("--substance", action="append", default=[], metavar="NAME=TONNES",
                   help="Chinese/English name, CAS or category code = quantity in tonnes (repeatable)")
    a = p.parse_args(argv)
    if a.grade not in (None, "grade"):
        p.error(f"unknown sub-command {a.grade!r}")
    return grade_command(a.people, a.substance)


if __name__ == "__main__":
    sys.exit(main())
