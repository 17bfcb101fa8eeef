"""The repository's own files, for tests that check what a clone carries (not a test module)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: never part of a clone: tool caches, the venv, build output
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", "build", "bench-results", ".hypothesis"}


def tracked_files() -> list[Path]:
    """Absolute paths of the files git tracks; when the tree is not a git checkout (an exported copy),
    every file outside SKIP_DIRS."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True,
                             timeout=30).stdout
        files = [ROOT / name for name in out.decode().split("\0") if name]
        if files:
            return [f for f in files if f.is_file()]
    except (OSError, subprocess.CalledProcessError):
        pass
    return [p for p in ROOT.rglob("*") if p.is_file() and not (set(p.relative_to(ROOT).parts) & SKIP_DIRS)]
