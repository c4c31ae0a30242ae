"""A private CA and node/client certificates for a test or development cluster
(needs the `cryptography` package: `pip install 'dmq[security]'`).

    python -m dmq.security.certs --dir certs --nodes 1,2,3 --clients alice

writes certs/ca.pem (and its key, ca.key), certs/node-<id>.pem + .key for each node
(common name node-<id>, what `ssl.node.cn.format` expects; valid for 127.0.0.1 and
localhost plus `--hosts`) and certs/<name>.pem + .key for each client. For
production, use your organisation's CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dmq"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class CA:
    dir: Path
    name: str = "dmq-ca"
    days: int = 365

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(self.name)).issuer_name(_name(self.name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.cafile = self.dir / "ca.pem"
        self.cafile.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        keyfile = self.dir / "ca.key"
        keyfile.write_bytes(_key_pem(self.key))
        keyfile.chmod(0o600)

    def issue(self, cn: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
              ) -> tuple[Path, Path]:
        """A certificate for `cn`, valid for `hosts` as a server and as a client:
        (certificate file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=self.days)))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = (
            builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256()))
        certfile = self.dir / f"{cn}.pem"
        keyfile = self.dir / f"{cn}.key"
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        keyfile.write_bytes(_key_pem(key))
        keyfile.chmod(0o600)
        return certfile, keyfile


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dmq.security.certs",
                                 description="a private CA and node/client certificates")
    ap.add_argument("--dir", required=True, type=Path, help="where the PEM files go")
    ap.add_argument("--nodes", default="", help="node ids, comma-separated: node-<id>.pem")
    ap.add_argument("--clients", default="", help="client names, comma-separated")
    ap.add_argument("--hosts", default="", help="more host names/IPs the node certificates "
                    "are valid for, comma-separated (127.0.0.1 and localhost always)")
    ap.add_argument("--days", type=int, default=365, help="validity in days")
    args = ap.parse_args(argv)
    hosts = ("127.0.0.1", "localhost", *[h for h in args.hosts.split(",") if h])
    ca = CA(args.dir, days=args.days)
    print(ca.cafile)
    for node_id in [n for n in args.nodes.split(",") if n]:
        print(*ca.issue(f"node-{int(node_id)}", hosts))
    for name in [c for c in args.clients.split(",") if c]:
        print(*ca.issue(name, ()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
