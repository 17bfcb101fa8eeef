"""Make the secret and certificate files config/example-site.yaml refers to, as a technician would (not a test module).

The private signing key is real (``hazard-gateway keygen``), and so are the OPC UA client and server
certificates (``check`` reads them: the client's ApplicationUri comes from its certificate's URI SAN, OPC UA
Part 6 6.2.2); the uplink CA file is a real PEM certificate too; the uplink client key and certificate and the OPC UA password are placeholders: ``check`` verifies
that those secret files exist with mode 0600 and that the certificates exist, not what they contain.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from opcua_certs import make_cert

SECRETS = ("uplink-client.key", "opcua-password")
CERTIFICATES = ("uplink-client.pem",)


def make_site_secrets(keys: Path, keygen_cmd: list[str] | None = None) -> None:
    """Create ``keys``/private.pem (by ``keygen_cmd``, a hazard-gateway keygen command line, or in process)
    and the other files the template names. Raises AssertionError when keygen fails."""
    if keygen_cmd:
        r = subprocess.run(keygen_cmd, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    else:
        from gateway.chain.signing import keygen

        keygen(keys)
    for name in SECRETS:
        (keys / name).write_text("secret\n")
        (keys / name).chmod(0o600)
    for name in CERTIFICATES:
        (keys / name).write_text("certificate (public)\n")  # must exist; any mode
    ca, ca_key = make_cert(keys, "regulator-ca", None, server=True, pem=True)   # check loads the CA file
    ca.rename(keys / "regulator-ca.pem")
    ca_key.unlink()
    cert, key = make_cert(keys, "opcua-client", "urn:tankfarm:hazard-gateway", server=False)
    cert.rename(keys / "opcua-client-cert.der")
    key.rename(keys / "opcua-client-key.pem")
    server, server_key = make_cert(keys, "opcua-server", "urn:tankfarm:plc", server=True)
    server.rename(keys / "opcua-server-cert.der")
    server_key.unlink()
