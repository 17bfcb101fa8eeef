"""Make the secret and certificate files config/example-site.yaml refers to, as a technician would (not a test module).

The private signing key is real (``hazard-gateway keygen``); the uplink and OPC UA keys and the
certificates are placeholders: ``check`` verifies that secret files exist with mode 0600 and that
certificates exist, not what they contain.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SECRETS = ("uplink-client.key", "opcua-client-key.pem", "opcua-password")
CERTIFICATES = ("regulator-ca.pem", "uplink-client.pem", "opcua-client-cert.der", "opcua-server-cert.der")


def make_site_secrets(keys: Path, keygen_cmd: list[str] | None = None) -> None:
    """Create ``keys``/private.pem (by ``keygen_cmd``, a hazard-gateway keygen command line, or in process)
    and the other files the template names. Raises AssertionError when keygen fails."""
    if keygen_cmd:
        r = subprocess.run(keygen_cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    else:
        from gateway.signing import keygen

        keygen(keys)
    for name in SECRETS:
        (keys / name).write_text("secret\n")
        (keys / name).chmod(0o600)
    for name in CERTIFICATES:
        (keys / name).write_text("certificate (public)\n")  # must exist; any mode
