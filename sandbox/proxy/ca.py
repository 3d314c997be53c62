"""The stack's certificate authority: what the TLS-terminating proxy signs its leaf certificates with.

Made with ``cryptography`` at first use and kept in the state folder:

- ``<home>/proxy/ca.key``: the CA's private key followed by its certificate, mode 0600 (user-only), owned by
  the owner of ``<home>/proxy`` (of ``<home>`` when that folder does not exist yet: the proxy container
  mounts ``<home>/proxy`` alone, and there ``<home>`` is a root-owned placeholder). One file, so the key and
  its certificate appear together or not at all: it is written to a temporary file and linked into place, and
  two processes creating it at once (``aml-sandbox up`` on the host, the proxy in its container) end with the
  same CA.
- ``<home>/proxy/ca.pem``: the CA certificate alone (public).
- ``<home>/proxy/ca-bundle.pem``: certifi's public roots followed by the CA, for ``REQUESTS_CA_BUNDLE``
  (requests, azure-core) and ``SSL_CERT_FILE`` (OpenSSL, rslex): clients that trust it reach the public
  internet through the proxy's tunnels as before, and the local blob storage through its leaves.

The CA is name-constrained (a critical NameConstraints extension): it can vouch only for DNS names under
``PERMITTED_DNS`` (``core.windows.net`` permits ``acct.blob.core.windows.net``: a subtree is the name and
every name ending in ``.`` + it) and for no IP address, so even a leaked key, or a bundle trusted
system-wide, cannot impersonate any other host; OpenSSL, rustls/webpki and ``cryptography`` enforce it. A CA
made before the constraint existed (or with other subtrees) is replaced once by :meth:`StackCA.ensure`: same
files, a new key and certificate. Clients read the bundle afresh at each start (``REQUESTS_CA_BUNDLE``,
``SSL_CERT_FILE``), so they trust the new CA the next time they start; a proxy container still running with
the old CA in memory must be restarted (``docker compose -p <project> restart proxy``).

Leaf certificates (one per host name, the name in subjectAltName, a key shared by all leaves) are minted on
demand and cached in memory only; nothing but the CA is written to disk.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandbox.private_files import create_once, give_to, read_private, replace_private

PROXY_FOLDER = "proxy"
KEY_FILE = "ca.key"
CERT_FILE = "ca.pem"
BUNDLE_FILE = "ca-bundle.pem"
CA_NAME = "aml-sandbox local stack CA"
CA_LIFETIME = datetime.timedelta(days=3650)
#: Leaves live in memory only; they are minted again well before they expire.
LEAF_LIFETIME = datetime.timedelta(days=30)
LEAF_RENEW_AFTER = datetime.timedelta(days=7)
#: Host names whose leaves are kept (least recently used go first).
LEAF_CACHE_SIZE = 256
#: Backdating, so a client whose clock is a little behind still accepts a fresh certificate.
CLOCK_SKEW = datetime.timedelta(hours=1)
#: The DNS subtrees the stack will ever impersonate (Azure's service domains); the CA can sign for no others.
PERMITTED_DNS = ("core.windows.net", "azure.com", "azureml.ms", "azure.net", "windows.net", "microsoftonline.com",
                 "microsoft.com", "visualstudio.com", "applicationinsights.io")
NAME_CONSTRAINTS = x509.NameConstraints(
    permitted_subtrees=[x509.DNSName(name) for name in PERMITTED_DNS],
    excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")), x509.IPAddress(ipaddress.ip_network("::/0"))],
)


@dataclass(frozen=True)
class CAFiles:
    """Where one stack keeps its CA."""

    folder: Path

    @classmethod
    def for_home(cls, home: Path) -> CAFiles:
        return cls(home / PROXY_FOLDER)

    @property
    def key(self) -> Path:
        return self.folder / KEY_FILE

    @property
    def cert(self) -> Path:
        return self.folder / CERT_FILE

    @property
    def bundle(self) -> Path:
        return self.folder / BUNDLE_FILE


class StackCA:
    """The CA (loaded, or made at first use) and the leaf certificates it signs."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, files: CAFiles) -> None:
        self.key = key
        self.cert = cert
        self.files = files
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaves: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def ensure(cls, home: Path) -> StackCA:
        """Load the stack's CA from ``<home>/proxy``, making it first if it does not exist; write the bundle.

        A CA without the current name constraints (made by an older version) is replaced by a new one in the
        same files. Files are given to the owner of ``<home>/proxy`` (else of ``<home>``) when root writes them.
        """
        files = CAFiles.for_home(home)
        home.mkdir(parents=True, exist_ok=True)
        owner = _owner(home, files.folder)
        _make_folder(files.folder, owner)
        with _locked(files.folder):  # the host's `aml-sandbox up` and the proxy container may start together
            key, cert = _load_or_make(files, owner)
            if _name_constraints(cert) != NAME_CONSTRAINTS:
                replace_private(files.key, _new_ca_pem(), owner=owner)
                key, cert = _load_or_make(files, owner)
        ca = cls(key, cert, files)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        _write_public(files.cert, cert_pem, owner)
        _write_public(files.bundle, _public_roots() + b"\n" + cert_pem, owner)
        return ca

    # -- leaves ------------------------------------------------------------------------------

    def leaf_pem(self, host: str) -> tuple[bytes, bytes]:
        """(certificate chain, private key) in PEM for ``host``: a new leaf signed by the CA.

        ``host`` must be a DNS name under ``PERMITTED_DNS``: clients refuse a leaf for any other name (the CA's
        name constraints), so asking for one is a ``ValueError``.
        """
        if not permitted(host):
            raise ValueError(f"the stack's CA signs for names under {', '.join(PERMITTED_DNS)} only (its name "
                             f"constraints), not for {host!r}")
        now = datetime.datetime.now(datetime.UTC)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + LEAF_LIFETIME)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = leaf.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        key = self._leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())
        return chain, key

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a leaf for ``host`` (cached in memory, re-minted before expiry)."""
        host = host.lower()
        now = datetime.datetime.now(datetime.UTC)
        with self._lock:
            cached = self._leaves.get(host)
            if cached is not None and now - cached[1] < LEAF_RENEW_AFTER:
                self._leaves.move_to_end(host)
                return cached[0]
        context = self._new_context(host)
        with self._lock:
            self._leaves[host] = (context, now)
            self._leaves.move_to_end(host)
            while len(self._leaves) > LEAF_CACHE_SIZE:
                self._leaves.popitem(last=False)
        return context

    def _new_context(self, host: str) -> ssl.SSLContext:
        chain, key = self.leaf_pem(host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        # ssl loads certificates from files only: a private folder, removed at once.
        with tempfile.TemporaryDirectory(prefix="aml-sandbox-leaf-") as folder:
            cert_path, key_path = Path(folder) / "leaf.pem", Path(folder) / "leaf.key"
            cert_path.write_bytes(chain)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key)
            context.load_cert_chain(cert_path, key_path)
        return context


# -- the CA itself ---------------------------------------------------------------------------


def _new_ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aml-sandbox")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(NAME_CONSTRAINTS, critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
            + cert.public_bytes(serialization.Encoding.PEM))


def permitted(host: str) -> bool:
    """Whether ``host`` is a DNS name the CA's name constraints let it sign for."""
    name = host.lower().rstrip(".")
    return any(name == tree or name.endswith("." + tree) for tree in PERMITTED_DNS)


def _name_constraints(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def _load_or_make(files: CAFiles, owner: os.stat_result) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        pem = read_private(files.key, 64 * 1024)
    except FileNotFoundError:
        create_once(files.key, _new_ca_pem(), owner=owner)
        pem = read_private(files.key, 64 * 1024)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
        cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE-----"):])
    except ValueError as exc:
        raise ValueError(f"{files.key} does not hold the stack's CA key and certificate ({exc}); delete "
                         f"{files.folder} and start the stack again (clients must then trust the new "
                         f"{files.bundle})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.key} holds a {type(key).__name__}, not the EC key the stack's CA uses; delete "
                         f"{files.folder} and start the stack again")
    return key, cert


def _public_roots() -> bytes:
    import certifi

    return Path(certifi.where()).read_bytes().rstrip(b"\n")


# -- files -----------------------------------------------------------------------------------


def _owner(home: Path, folder: Path) -> os.stat_result:
    """Whose files these are: ``<home>/proxy``'s owner when it exists (in the proxy container ``<home>`` is a
    root-owned placeholder around that one mounted folder), else ``<home>``'s."""
    try:
        stat = folder.lstat()
    except FileNotFoundError:
        return home.stat()
    return stat if not folder.is_symlink() and folder.is_dir() else home.stat()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock: across processes and containers sharing the bind mount)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_folder(folder: Path, owner: os.stat_result) -> None:
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        if folder.is_symlink() or not folder.is_dir():
            raise ValueError(f"{folder} must be a folder (it holds the stack's CA); remove it and start the "
                             "stack again") from None
        return
    give_to(folder, owner)


def _write_public(path: Path, data: bytes, owner: os.stat_result) -> None:
    """Replace ``path`` with ``data`` (mode 0644) unless it holds exactly that already."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        give_to(Path(temporary), owner)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
