"""Files shipped beside the code: config templates, device profiles and the systemd units.

One lookup for every caller (install-service, the profile loader, the demo): the file is taken from
the source tree when the package runs from a checkout (or an editable install), else from the data
directory a plain ``pip install`` of the wheel laid (pyproject ``[tool.setuptools.data-files]``):
``<prefix>/share/hazard-gateway/<sub>``, where prefix is the venv (``sys.prefix``) or, for
``pip install --user``, the user base (``sysconfig`` scheme ``*_user``).
"""

from __future__ import annotations

import sys
import sysconfig
from importlib import metadata
from pathlib import Path

SOURCE_TREE = Path(__file__).resolve().parent.parent
DIST_NAME = "hazard-gateway"


def _data_roots() -> list[Path]:
    schemes = (None, sysconfig.get_preferred_scheme("user"))  # this interpreter's (the venv's), then --user
    return [Path(sysconfig.get_path("data", s) if s else sys.prefix) / "share" / DIST_NAME for s in schemes]


def shipped(sub: str) -> Path:
    """Path of the shipped file or directory ``sub`` (e.g. ``"config/demo.yaml"``, ``"systemd"``).

    The source tree wins when it holds ``sub`` (a checkout: what you edit is what runs). When no
    location has it, the source-tree path is returned, so the caller's "not found" names a real place.
    """
    for base in (SOURCE_TREE, *_data_roots()):
        if (base / sub).exists():
            return base / sub
    return SOURCE_TREE / sub


def version() -> str:
    """The installed distribution's version: the one source of truth is pyproject.toml ``[project] version``
    (read back through the package metadata that pip wrote from it)."""
    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:  # run from a checkout that was never pip-installed
        import tomllib
        with open(SOURCE_TREE / "pyproject.toml", "rb") as f:
            return tomllib.load(f)["project"]["version"]
