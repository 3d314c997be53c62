"""The stack CA's name constraints and file ownership: real TLS handshakes over a socket pair, no network."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
import tempfile
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sandbox.proxy.ca import NAME_CONSTRAINTS, StackCA

BLOB_HOST = "devstoreaccount1.blob.core.windows.net"
NOW = datetime.datetime.now(datetime.UTC)


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, san: x509.GeneralName | None = None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer.subject if issuer else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if san is None:  # a CA, without name constraints: what the stack made before they existed
        builder = (builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                decipher_only=False), critical=True))
    else:
        assert issuer is not None
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                                  critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def unconstrained_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _cert("an old aml-sandbox CA", key, None, key)


def leaf_context(issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate,
                 san: x509.GeneralName) -> ssl.SSLContext:
    """A server context presenting a leaf for ``san`` signed by ``issuer``, however constrained that is."""
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("leaf", key, issuer, issuer_key, san=san)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as folder:
        chain, key_file = Path(folder) / "chain.pem", Path(folder) / "key.pem"
        chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, issuer)))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context.load_cert_chain(chain, key_file)
    return context


def handshake(server: ssl.SSLContext, trusted: Path, host: str) -> None:
    """A TLS handshake over a socket pair, the client trusting only ``trusted``; raises what the client sees."""
    client = ssl.create_default_context(cafile=str(trusted))
    left, right = socket.socketpair()
    left.settimeout(10)
    right.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(left, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate: it says why

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=host) as tls:
            tls.sendall(b"x")
    finally:
        right.close()
        thread.join(10)
        left.close()


def write_pem(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> StackCA:
    return StackCA.ensure(tmp_path_factory.mktemp("home"))


# -- name constraints -------------------------------------------------------------------------------


def test_the_ca_carries_critical_name_constraints_for_azure_domains_only(ca: StackCA) -> None:
    extension = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    permitted = {name.value for name in extension.value.permitted_subtrees or []}
    assert {"core.windows.net", "azure.com", "azureml.ms", "microsoftonline.com"} <= permitted
    assert "example.org" not in permitted


@pytest.mark.parametrize("host", [BLOB_HOST, "management.azure.com", "login.microsoftonline.com"])
def test_a_leaf_for_a_name_under_a_permitted_subtree_verifies_in_a_real_handshake(ca: StackCA, host: str) -> None:
    handshake(ca.server_context(host), ca.files.cert, host)


def test_a_leaf_for_any_other_host_signed_by_the_ca_fails_verification_because_of_the_constraint(
        ca: StackCA, tmp_path: Path) -> None:
    forged = leaf_context(ca.key, ca.cert, x509.DNSName("example.org"))
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        handshake(forged, ca.files.cert, "example.org")
    assert refused.value.verify_message == "permitted subtree violation"
    # The same leaf from a CA without the constraint verifies: the constraint, nothing else, refuses it.
    old_key, old_cert = unconstrained_ca()
    (tmp_path / "old.pem").write_bytes(old_cert.public_bytes(serialization.Encoding.PEM))
    handshake(leaf_context(old_key, old_cert, x509.DNSName("example.org")), tmp_path / "old.pem", "example.org")


def test_a_leaf_for_an_ip_address_signed_by_the_ca_fails_verification(ca: StackCA) -> None:
    forged = leaf_context(ca.key, ca.cert, x509.IPAddress(ipaddress.ip_address("10.0.0.5")))
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        handshake(forged, ca.files.cert, "10.0.0.5")
    assert refused.value.verify_message == "excluded subtree violation"


def test_webpki_rules_refuse_a_leaf_outside_the_constraint_too(ca: StackCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("leaf", key, ca.cert, ca.key, san=x509.DNSName("example.org"))
    verifier = PolicyBuilder().store(Store([ca.cert])).build_server_verifier(x509.DNSName("example.org"))
    with pytest.raises(VerificationError):
        verifier.verify(leaf, [])


def test_the_ca_refuses_to_mint_a_leaf_its_constraints_forbid(ca: StackCA) -> None:
    with pytest.raises(ValueError, match=r"signs for names under core\.windows\.net.*not for 'example\.org'"):
        ca.server_context("example.org")
    with pytest.raises(ValueError, match=r"not for 'evilwindows\.net'"):
        ca.leaf_pem("evilwindows.net")


def test_a_ca_made_before_the_constraint_is_replaced_once_in_the_same_files(tmp_path: Path) -> None:
    folder = tmp_path / "proxy"
    folder.mkdir(mode=0o700)
    old_key, old_cert = unconstrained_ca()
    write_pem(folder / "ca.key", old_key, old_cert)
    os.chmod(folder / "ca.key", 0o600)
    ca = StackCA.ensure(tmp_path)
    assert ca.cert != old_cert
    assert ca.cert.extensions.get_extension_for_class(x509.NameConstraints).value == NAME_CONSTRAINTS
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes()) == ca.cert
    assert (folder / "ca-bundle.pem").read_bytes().rstrip().endswith(
        ca.cert.public_bytes(serialization.Encoding.PEM).rstrip())
    assert StackCA.ensure(tmp_path).cert == ca.cert, "replaced once, then kept"
    handshake(ca.server_context(BLOB_HOST), folder / "ca-bundle.pem", BLOB_HOST)


# -- ownership: the proxy container (root) sees <home>/proxy only ----------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root (as the "
                                                            "proxy container runs)")


@needs_root
def test_files_written_by_root_belong_to_the_owner_of_the_proxy_folder_when_home_is_a_root_placeholder(
        tmp_path: Path) -> None:
    home = tmp_path / "home"  # as in the proxy container: <home> made by Docker, owned by root
    (home / "proxy").mkdir(parents=True, mode=0o700)
    os.chown(home / "proxy", 4321, 4321)
    StackCA.ensure(home)
    owners = {name: (home / "proxy" / name).stat().st_uid for name in ("ca.key", "ca.pem", "ca-bundle.pem")}
    assert owners == {"ca.key": 4321, "ca.pem": 4321, "ca-bundle.pem": 4321}
    old_key, old_cert = unconstrained_ca()  # a replaced CA keeps the owner too
    write_pem(home / "proxy" / "ca.key", old_key, old_cert)
    StackCA.ensure(home)
    assert (home / "proxy" / "ca.key").stat().st_uid == 4321


@needs_root
def test_without_a_proxy_folder_the_files_belong_to_the_owner_of_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 4321, 4321)
    StackCA.ensure(home)
    assert {p.name: p.stat().st_uid for p in [home / "proxy", *(home / "proxy").iterdir()]} == {
        "proxy": 4321, "ca.key": 4321, "ca.pem": 4321, "ca-bundle.pem": 4321}
