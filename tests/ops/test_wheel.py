"""The built wheel is complete: installed into a fresh venv and run from another folder, the commands work.

The wheel is built from the tracked files alone (copied out of the checkout, so nothing untracked or
generated in the tree can make it pass), installed with its dependencies into a new venv, and run
with a working directory outside the repository: ``--version`` (one source of truth: pyproject.toml),
``schema`` (the packaged config/schema.json), ``check`` on the packaged template (once its secret
files exist, as a technician would make them), ``install-service --dry-run``. The plain wheel carries the
gateway without the regulator's web stack: ``receiver`` and ``demo`` say which extra to install (exit 2, one
line); with ``[demo]`` installed the full ``demo`` runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from repo_files import tracked_files
from site_secrets import make_site_secrets

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# e2e: builds the wheel into a venv and runs its command line
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the venv's hazard-gateway, a working folder outside the repository)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    for f in tracked_files():
        dest = src / f.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    r = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(base / "dist"), str(src)], base)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (base / "dist").glob("hazard_gateway-*.whl")
    venv = base / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)], base)
    assert r.returncode == 0, r.stderr
    r = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], base, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    work = base / "elsewhere"
    work.mkdir()
    return venv / "bin" / "hazard-gateway", work


def test_version(installed):
    exe, work = installed
    r = _run([str(exe), "--version"], work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hazard-gateway {VERSION}"


def test_schema_is_the_shipped_one(installed):
    exe, work = installed
    r = _run([str(exe), "schema"], work)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "config" / "schema.json").read_text()


def packaged(exe: Path, sub: str) -> Path:
    return exe.parent.parent / "share" / "hazard-gateway" / sub


def test_check_on_the_packaged_template(installed):
    exe, work = installed
    template = packaged(exe, "config/example-site.yaml")
    assert template.is_file()
    site_dir = work / "site"
    site_dir.mkdir()
    site = site_dir / "gateway.yaml"
    shutil.copy(template, site)
    r = _run([str(exe), "check", str(site)], work)
    assert r.returncode == 2 and "does not exist" in r.stderr, (r.returncode, r.stderr)  # keys not made yet
    make_site_secrets(site_dir / "keys", keygen_cmd=[str(exe), "keygen", "--out", str(site_dir / "keys")])
    r = _run([str(exe), "check", str(site)], work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{site}: ok (9 devices,")


def test_install_service_dry_run(installed):
    exe, work = installed
    root = work / "root"
    r = _run([str(exe), "install-service", "--prefix", str(root), "--dry-run"], work)
    assert r.returncode == 0, r.stderr
    assert "hazard-gateway.service" in r.stdout
    assert not root.exists() or not any(root.rglob("*.service"))  # a dry run writes nothing


def test_the_plain_wheel_has_no_web_stack_and_says_which_extra(installed):
    exe, work = installed
    py = exe.parent / "python"
    r = _run([str(py), "-c", "import importlib.util as u; print(u.find_spec('starlette'), u.find_spec('uvicorn'))"],
             work)
    assert r.stdout.strip() == "None None", r.stdout      # a plant installs no web server
    r = _run([str(exe), "receiver", "--listen", "127.0.0.1:0", "--store", "rx.sqlite", "--trust", "."], work)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "hazard-gateway: the receiver needs starlette and uvicorn, which the plain gateway does not install: "
        "pip install 'hazard-gateway[receiver]'"], (r.returncode, r.stderr)
    r = _run([str(exe), "demo", "--workdir", str(work / "no-demo")], work)
    assert r.returncode == 2 and "pip install 'hazard-gateway[demo]'" in r.stderr and "Traceback" not in r.stderr, \
        (r.returncode, r.stderr)


def test_demo(installed):
    exe, work = installed
    wheel = next((exe.parent.parent.parent / "dist").glob("hazard_gateway-*.whl"))
    r = _run([str(exe.parent / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[demo]"], work, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = work / "demo.json"
    r = _run([str(exe), "demo", "--workdir", str(work / "demo"), "--json", str(out)], work, timeout=600)
    summary = json.loads(out.read_text()) if out.exists() else {}
    log = work / "demo" / "gateway.log"
    assert r.returncode == 0, (summary.get("failures", "(no summary written)"), r.stderr[-1500:],
                               log.read_text(errors="replace")[-3000:] if log.exists() else "(no gateway.log)")
    assert summary["failures"] == [], summary
    assert summary["readings_lost"] == 0, summary
    assert summary["batches_verified"] == summary["batches_built"] > 0, summary
