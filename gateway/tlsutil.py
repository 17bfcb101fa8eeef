"""TLS helpers: the uplinks' client context, the MQTT broker URL rule (TLS unless the broker is on
loopback) of both ends of the wire, and self-signed certificates for tests, the demo and a first
commissioning.

A production receiver uses a certificate from the regulator's PKI; make_self_signed
only makes a server certificate that a client pins explicitly
(``ssl.create_default_context(cafile=cert_path)``), e.g. in tests over 127.0.0.1.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def client_context(ca_file: str | os.PathLike[str] | bool | None,
                   client_cert: str | tuple[str, str] | None, what: str) -> ssl.SSLContext:
    """A verifying TLS client context (certificate checks are never turned off).

    ca_file: PEM of the CA (or the pinned self-signed certificate); None or True: the system CA
    store. client_cert: one PEM with certificate and key, or (cert_path, key_path), for mutual
    TLS. Raises ValueError (one line naming ``what`` and the files) when a file is unusable."""
    try:
        ctx = (ssl.create_default_context() if ca_file is None or ca_file is True
               else ssl.create_default_context(cafile=str(ca_file)))
        if isinstance(client_cert, tuple):
            ctx.load_cert_chain(client_cert[0], client_cert[1])
        elif client_cert is not None:
            ctx.load_cert_chain(client_cert)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{what} TLS files ({ca_file}, {client_cert}): {exc}") from None
    return ctx


def parse_broker_url(url: str, topic_option: str = "uplink.topic") -> tuple[bool, str, int]:
    """``mqtts://host[:port]`` (TLS, default 8883) or ``mqtt://host[:port]`` (loopback only,
    default 1883) -> (tls, host, port), for the gateway's MQTT uplink and the receiver's MQTT ingest.
    ``topic_option`` names where the topic is set instead (in the error for a URL with a path).
    ValueError (one line) otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtts", "mqtt") or not parts.hostname:
        raise ValueError(f"mqtt url {url!r}: must be mqtts://host[:port] (or mqtt:// to a loopback broker)")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise ValueError(f"mqtt url {url!r}: only mqtts://host[:port]; set the topic with {topic_option}")
    host = parts.hostname
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"mqtt url {url!r}: bad port") from None
    if not tls:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"mqtt url {url!r}: plain mqtt:// only to a loopback broker; use mqtts:// (TLS)")
    return tls, host, port


def make_self_signed(directory: str | os.PathLike[str],
                     hostnames: Iterable[str] = ("127.0.0.1", "localhost"),
                     days: int = 30) -> tuple[Path, Path]:
    """Write a self-signed ECDSA P-256 server certificate and its key into ``directory``.

    hostnames: DNS names and/or IP literals for the subjectAltName (RFC 5280 s.4.2.1.6;
    clients match IPs against iPAddress entries, names against dNSName entries,
    RFC 6125). days: validity from now (backdated 5 minutes for clock skew).
    Returns (cert_path, key_path): ``server.crt`` (PEM, 0644) and ``server.key``
    (PKCS#8 PEM, unencrypted, created 0600). Existing files are replaced.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = list(hostnames)
    if not names:
        raise ValueError("make_self_signed: at least one hostname is needed")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hazard-gateway test receiver")])
    now = _dt.datetime.now(_dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = d / "server.crt", d / "server.key"
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    if key_path.exists():
        key_path.unlink()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
