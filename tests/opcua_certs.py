"""Self-signed OPC UA application certificates for the tests (not a test module): what a technician
makes with the plant's PKI tool, made here with `cryptography`."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_cert(dirpath: Path, name: str, app_uri: str | None, server: bool, pem: bool = False) -> tuple[Path, Path]:
    """Self-signed RSA-2048 / SHA-256 certificate (DER, or PEM with pem=True) + key (PEM, 0600),
    application URI in the subjectAltName (Part 6 6.2.2: the ApplicationUri shall be in the
    certificate's URI SAN); app_uri None: no URI in the SAN (DNS / IP only)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    uri = [x509.UniformResourceIdentifier(app_uri)] if app_uri else []
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hazard-gateway tests")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                *uri, x509.DNSName("localhost"),
                x509.DNSName(socket.gethostname()), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                         data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = dirpath / f"{name}.{'pem' if pem else 'der'}", dirpath / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM if pem else serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
