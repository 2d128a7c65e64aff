"""A site CA and the certificates the agents and the controller present to each other (mTLS).

``powerctl certs init --out DIR --agents N`` writes, for one site:

    ca.pem, ca.key                 the site CA (keep ca.key offline after commissioning)
    controller.pem, controller.key the controller's client certificate (CN = SAN = "controller")
    agent-000.pem, agent-000.key   one server certificate per agent (CN = SAN = its node name)

Keys are ECDSA P-256, written with mode 0600 (created that way: no window in which others can read
them). Certificates carry the extended key usage of their role, so an agent's certificate cannot
act as a controller's, and the CA's path length is 0. Another site's CA signs nothing this site's
agents accept: each agent trusts only its own site's ``ca.pem``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CONTROLLER_NAME = "controller"
KEY_MODE = 0o600


@dataclass(frozen=True)
class Issued:
    cert_path: Path
    key_path: Path


def agent_name(i: int) -> str:
    return f"agent-{i:03d}"


def _name(cn: str, site: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"powerctl site {site}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, KEY_MODE)  # an existing file keeps its old mode through O_CREAT


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(site: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = _name(f"powerctl site CA {site}", site)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, *, site: str, server: bool,
          ips: tuple[str, ...] = (), days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A leaf certificate for ``cn`` (DNS SAN ``cn`` plus ``ips``): server auth or client auth."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(cn)]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (x509.CertificateBuilder().subject_name(_name(cn, site)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def init_site(out: Path, *, agents: int, site: str = "site", ips: tuple[str, ...] = ("127.0.0.1",),
              days: int = 825) -> dict[str, Issued]:
    """Write a site CA, the controller's certificate and ``agents`` agent certificates into ``out``.
    Returns name -> paths (``"ca"``, ``"controller"``, ``"agent-000"``...). Refuses a non-empty ``out``
    that already holds a CA (never overwrite a commissioned site's keys)."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.key").exists() or (out / "ca.pem").exists():
        raise FileExistsError(f"{out} already holds a site CA (ca.pem/ca.key): refusing to overwrite it")
    ca_key, ca_cert = make_ca(site, days)
    done = {"ca": Issued(out / "ca.pem", out / "ca.key")}
    _write_key(out / "ca.key", ca_key)
    _write_cert(out / "ca.pem", ca_cert)
    leaves = [(CONTROLLER_NAME, False)] + [(agent_name(i), True) for i in range(agents)]
    for cn, server in leaves:
        key, cert = issue(ca_key, ca_cert, cn, site=site, server=server, ips=ips if server else (), days=days)
        _write_key(out / f"{cn}.key", key)
        _write_cert(out / f"{cn}.pem", cert)
        done[cn] = Issued(out / f"{cn}.pem", out / f"{cn}.key")
    return done
