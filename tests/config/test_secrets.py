"""Secrets only by file path (docs/design.md, Secrets): `check` and `run` refuse missing secret files and files that
group/others can access, as FILE:LINE:COL with exit 2; inline passwords and key material are errors;
the logs never carry key material or passwords."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, check_secrets, load_config
from gateway.ops.logutil import OneLineFormatter, redact
from gateway.chain.signing import keygen

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]

CONFIG = """gateway: {id: s, state_dir: state}
keys:
  private_key: keys/private.pem
uplink:
  url: https://127.0.0.1:9/v1/batches
  client_cert: keys/client.pem
  client_key: keys/client.key
devices:
  - name: ua
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:9/
    security:
      username: gw
      password_file: keys/ua-password
    tags: [{name: a, node_id: "ns=2;s=A"}]
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    keygen(tmp_path / "keys")
    for name in ("client.key", "ua-password"):
        f = tmp_path / "keys" / name
        f.write_text("s3cret\n")
        f.chmod(0o600)
    (tmp_path / "keys" / "client.pem").write_text("certificate (public; any mode)\n")
    (tmp_path / "gw.yaml").write_text(CONFIG)
    return tmp_path / "gw.yaml"


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(path)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


@pytest.mark.e2e
def test_good_secret_files_pass(site: Path):
    assert check_secrets(load_config(site)) == []
    r = check(site)
    assert r.returncode == 0, r.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("name,line,col,path", [
    ("private.pem", 3, 16, "keys.private_key"),
    ("client.key", 7, 15, "uplink.client_key"),
    ("ua-password", 14, 22, "devices[0].security.password_file"),
])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secret_readable_by_group_or_others_is_refused(site: Path, name, line, col, path, mode):
    (site.parent / "keys" / name).chmod(mode)
    r = check(site)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    (err,) = r.stderr.strip().splitlines()
    assert err.startswith(f"{site}:{line}:{col}: {path}: secret file keys/{name} is accessible by group/others "
                          f"(mode {mode:04o})"), err
    assert "chmod 600" in err


@pytest.mark.e2e
def test_missing_secret_files_all_reported(site: Path):
    for name in ("client.key", "ua-password"):
        (site.parent / "keys" / name).unlink()
    r = check(site)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert [ln.split(": ")[0] for ln in lines] == [f"{site}:7:15", f"{site}:14:22"]
    assert all("does not exist" in ln for ln in lines)


def test_client_cert_holding_the_key_is_a_secret(site: Path):
    site.write_text(CONFIG.replace("  client_key: keys/client.key\n", ""))
    (site.parent / "keys" / "client.pem").write_text("cert and key")
    (site.parent / "keys" / "client.pem").chmod(0o644)
    problems = check_secrets(load_config(site))
    assert [(p.line, p.path) for p in problems] == [(6, "uplink.client_cert")]


@pytest.mark.e2e
def test_run_refuses_before_starting(site: Path):
    (site.parent / "keys" / "ua-password").chmod(0o644)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(site)], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"{site}:14:22: devices[0].security.password_file:")
    assert not (site.parent / "state").exists()   # nothing started


@pytest.mark.e2e
def test_check_refuses_a_symlinked_signing_key_as_run_does(site: Path):
    """run opens the signing key with O_NOFOLLOW (gateway.chain.signing.Signer.from_file): check must not pass a
    key file that run then refuses; both say so as the same FILE:LINE:COL line before anything starts."""
    keys = site.parent / "keys"
    (keys / "private.pem").rename(keys / "real.pem")   # still 0600: only the link is wrong
    (keys / "private.pem").symlink_to("real.pem")
    want = (f"{site}:3:16: keys.private_key: secret file keys/private.pem is a symbolic link (to real.pem); "
            "the signing key is opened without following links: put the key file itself there (chmod 600)")
    r = check(site)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [want]
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(site)], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [want]
    assert not (site.parent / "state").exists()   # nothing started


def test_inline_password_is_an_error_saying_to_use_a_file(site: Path):
    site.write_text(CONFIG.replace("password_file: keys/ua-password", "password: hunter2"))
    with pytest.raises(ConfigError) as ei:
        load_config(site)
    (p,) = [q for q in ei.value.problems if q.path.endswith("password")]
    assert (p.line, p.col) == (14, 7) and "never inline" in p.message and "file" in p.message
    assert "hunter2" not in str(ei.value)


@pytest.mark.e2e
def test_inline_key_material_is_an_error_and_not_echoed(site: Path):
    pem = (site.parent / "keys" / "private.pem").read_text()
    body = pem.splitlines()[1]
    inline = "  private_key: |\n" + "".join(f"    {ln}\n" for ln in pem.splitlines())
    site.write_text(CONFIG.replace("  private_key: keys/private.pem\n", inline))
    r = check(site)
    assert r.returncode == 2
    assert f"{site}:3:16: keys.private_key: key material must not be inline" in r.stderr
    assert body not in r.stderr


# --- logs carry no secrets ------------------------------------------------------------------

@pytest.mark.parametrize("text,secret", [
    ("login failed for user=gw password=hunter2 on opc.tcp://h", "hunter2"),
    ('config {"password": "hunter2", "user": "gw"}', "hunter2"),
    ("uplink https://gw:hunter2@regulator.example/v1 refused", "hunter2"),
    ("header Authorization: Bearer eyJhbGciOiJFZERTQSJ9.abc.def", "eyJhbGciOiJFZERTQSJ9"),
    ('jwk {"kty": "OKP", "crv": "Ed25519", "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A", "x": "11qY"}',
     "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"),
    ("token: abc123def456 expired", "abc123def456"),
])
def test_redact(text: str, secret: str):
    out = redact(text)
    assert secret not in out and "***" in out


def test_pem_in_a_log_record_is_redacted(site: Path):
    pem = (site.parent / "keys" / "private.pem").read_text()
    stream = io.StringIO()
    h = logging.StreamHandler(stream)
    h.setFormatter(OneLineFormatter(journald=False))
    lg = logging.getLogger("test.secrets")
    lg.addHandler(h)
    lg.propagate = False
    try:
        lg.error("bad key file:\n%s", pem)
    finally:
        lg.removeHandler(h)
    out = stream.getvalue()
    assert out.count("\n") == 1 and "[redacted PEM]" in out
    assert pem.splitlines()[1] not in out
    assert os.linesep not in out.rstrip("\n")


@pytest.mark.e2e
def test_missing_certificate_file_is_an_error_at_its_line(site: Path):
    """check must not pass a config whose uplink CA or client certificate is missing: run would die on it."""
    (site.parent / "keys" / "client.pem").unlink()
    r = check(site)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (err,) = r.stderr.strip().splitlines()
    assert err.startswith(f"{site}:6:16: uplink.client_cert: file keys/client.pem does not exist")


@pytest.mark.e2e
def test_check_json_gives_the_same_verdict_as_one_object(site: Path):
    run = [sys.executable, "-m", "gateway.cli", "check", "--json", str(site)]
    r = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["ok"], out["devices"], out["tags"], out["interlocks"]) == (True, 1, 1, 0)
    assert all(p["warning"] for p in out["problems"])
    (site.parent / "keys" / "client.key").unlink()
    r = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and r.stderr == ""
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["devices"] is None
    [p] = out["problems"]
    assert (p["file"], p["line"], p["col"], p["path"], p["warning"]) == (str(site), 7, 15, "uplink.client_key", False)
    assert "does not exist" in p["message"]
