"""Stack files, registry material, swarm objects and image contexts, checked on the controller."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import bcrypt
import pytest
import yaml
from cryptography import x509

from pyinfra_swarm.deploys.artifacts import context_archive
from pyinfra_swarm.deploys.objects import versioned
from pyinfra_swarm.deploys.registry import host_config, htpasswd, service_stack
from pyinfra_swarm.facts import parse_replicas
from pyinfra_swarm.pki import server_certificate
from pyinfra_swarm.stackfiles import StackError, check, render

DEMO = Path(__file__).resolve().parents[2] / "templates" / "stacks" / "demo.yml.j2"
DEMO_CONTEXT = {"registry": "10.1.0.1:5000", "demo_version": "1", "greeting": "hi", "web_replicas": 3, "web_port": 8080,
                "secrets": {}, "configs": {}}  # fmt: skip


def test_demo_template_defaults_to_vip_and_ingress_for_real_clusters():
    stack = check(render(DEMO, DEMO_CONTEXT), "demo")
    web = stack["services"]["web"]
    assert web["image"] == "10.1.0.1:5000/demo-app:1"
    assert web["deploy"]["endpoint_mode"] == "vip" and web["ports"][0]["mode"] == "ingress"
    assert web["hostname"] == "{{.Node.Hostname}}"
    lab = check(render(DEMO, {**DEMO_CONTEXT, "endpoint_mode": "dnsrr", "publish_mode": "host"}), "demo")
    assert lab["services"]["web"]["deploy"]["endpoint_mode"] == "dnsrr"
    assert lab["services"]["web"]["ports"][0]["mode"] == "host"


def test_undefined_variable_names_file_and_line(tmp_path):
    template = tmp_path / "t.yml.j2"
    template.write_text("services:\n  a:\n    image: {{ missing }}\n")
    with pytest.raises(StackError, match=re.escape(f"{template}:3: 'missing' is undefined")):
        render(template, {})
    template.write_text("services: {% if %}\n")
    with pytest.raises(StackError, match=re.escape(f"{template}:1:")):
        render(template, {})
    with pytest.raises(StackError, match="no such stack template"):
        render(tmp_path / "absent.yml.j2", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services:\n  a: [x\n", "invalid at line 3"),
        ("- a\n- b\n", "must be a mapping"),
        ("services: {}\n", "non-empty map"),
        ("services:\n  a:\n    command: x\n", "service 'a' has no image"),
        ("services:\n  a:\n    image: x\nbogus: 1\n", "unknown top-level key(s) bogus"),
    ],
)
def test_bad_stacks(text, message):
    with pytest.raises(StackError, match=re.escape(message)):
        check(text, "s.yml")
    assert check("x-defaults: &d {}\nservices:\n  a:\n    image: x\n", "s.yml")["services"]["a"]["image"] == "x"


def test_registry_service_stack_pins_the_node_and_uses_secrets():
    stack = yaml.safe_load(service_stack("registry:2", 5000, {"crt": "registry_crt_1", "key": "registry_key_1"},
                                         "registry_htpasswd_1"))  # fmt: skip
    service = stack["services"]["registry"]
    assert service["deploy"]["placement"]["constraints"] == ["node.labels.pyinfra-swarm.registry == true"]
    assert service["ports"] == [{"mode": "host", "protocol": "tcp", "published": 5000, "target": 5000}]
    assert service["volumes"] == ["data:/var/lib/registry"]
    assert service["environment"]["REGISTRY_AUTH"] == "htpasswd"
    assert stack["secrets"]["registry_key"] == {"external": True, "name": "registry_key_1"}
    plain = yaml.safe_load(service_stack("registry:2", 5000, {}, None))
    assert "REGISTRY_HTTP_TLS_CERTIFICATE" not in plain["services"]["registry"]["environment"]


def test_host_mode_config():
    config = yaml.safe_load(host_config(tls=True, auth=True))
    assert config["http"]["tls"]["certificate"] == "/etc/docker/registry/registry.crt"
    assert config["auth"]["htpasswd"]["path"] == "/etc/docker/registry/htpasswd"
    assert "tls" not in yaml.safe_load(host_config(tls=False, auth=False))["http"]


def test_htpasswd_is_bcrypt_and_stable_until_a_password_changes(tmp_path):
    first = htpasswd({"swarm": "s3cret"}, tmp_path)
    user, digest = first.strip().split(":", 1)
    assert user == "swarm" and bcrypt.checkpw(b"s3cret", digest.encode())
    assert htpasswd({"swarm": "s3cret"}, tmp_path) == first
    assert htpasswd({"swarm": "other"}, tmp_path) != first


def test_registry_certificate_is_signed_by_the_ca_for_its_address(tmp_path):
    ca, cert, key = server_certificate(tmp_path, "10.1.0.1")
    assert server_certificate(tmp_path, "10.1.0.1") == (ca, cert, key)
    certificate = x509.load_pem_x509_certificate(cert.encode())
    ca_certificate = x509.load_pem_x509_certificate(ca.encode())
    assert certificate.issuer == ca_certificate.subject
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.1.0.1"]
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600


def test_registry_certificate_is_renewed_on_request_and_before_it_expires(tmp_path, monkeypatch, caplog):
    import datetime

    _, cert, key = server_certificate(tmp_path, "10.1.0.1")
    _, renewed, renewed_key = server_certificate(tmp_path, "10.1.0.1", renew=True)
    assert renewed != cert and renewed_key != key
    assert server_certificate(tmp_path, "10.1.0.1")[1] == renewed  # kept until asked again
    monkeypatch.setattr("pyinfra_swarm.pki.RENEW_BEFORE", datetime.timedelta(days=4000))  # "expires soon"
    assert server_certificate(tmp_path, "10.1.0.1")[1] != renewed
    assert "expires within 4000 days: renewed" in caplog.text


def test_objects_are_versioned_by_content_with_a_key_of_the_pki_directory(pki_dir, monkeypatch):
    assert versioned("db", "a") == versioned("db", "a") != versioned("db", "b")
    assert re.fullmatch(r"db_[0-9a-f]{10}", versioned("db", "a"))
    assert versioned("db", "a") != f"db_{hashlib.sha256(b'a').hexdigest()[:10]}"  # not the bare value's hash
    assert (pki_dir / "object-key").stat().st_mode & 0o777 == 0o600
    keyed = versioned("db", "a")
    monkeypatch.setenv("PYINFRA_SWARM_PKI_DIR", str(pki_dir.parent / "other-pki"))
    assert versioned("db", "a") != keyed  # another controller's directory names it otherwise
    from pyinfra_swarm.deploys.objects import configure_objects
    from tests.unit.fakes import commands, host, plan

    networks = {"backend": {"attachable": True, "subnet": "10.30.0.0/24", "mtu": 1400, "encrypted": True}}
    manager = host(
        "m1", "10.1.0.1", swarm_networks=networks, swarm_secrets={"db": {"value": "a"}}, swarm_encrypted_overlays=True
    )
    cmds = commands(plan([configure_objects], [manager])["m1"])
    assert cmds == ["docker network create --driver overlay --attachable --subnet 10.30.0.0/24 "
                    "--opt com.docker.network.driver.mtu=1400 --opt encrypted backend",
                    f"base64 -d | docker secret create {versioned('db', 'a')} -"]  # fmt: skip


def test_build_context_archive_is_deterministic(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "app.sh").write_text("echo hi\n")
    first = context_archive(tmp_path)
    (tmp_path / "app.sh").touch()
    assert context_archive(tmp_path) == first
    (tmp_path / "app.sh").write_text("echo bye\n")
    assert context_archive(tmp_path)[1] != first[1]


def test_parse_replicas():
    assert parse_replicas(["demo_web 2/3", "demo_client 1/1", "demo_x 1/1 (max 1 per node)", "junk"]) == {
        "demo_web": (2, 3), "demo_client": (1, 1), "demo_x": (1, 1)
    }  # fmt: skip


def test_registry_host_mode_plan(tmp_path, monkeypatch):
    """Host mode: Debian's docker-registry on the registry node, the CA on every node, the port opened to
    the peers by the firewall, the acting manager logged in."""
    from pyinfra_swarm.deploys.firewall import configure_firewall
    from pyinfra_swarm.deploys.registry import configure_registry
    from tests.unit.fakes import commands, host, plan

    monkeypatch.setenv("PYINFRA_SWARM_PKI_DIR", str(tmp_path))
    data = {"registry_mode": "host", "registry_node": "@fake/w1", "registry_users": {"swarm": "pw"}}
    planned = plan([configure_firewall, configure_registry], [host("m1", "10.1.0.1", **data)],
                   [host("w1", "10.1.0.2", **data), host("w2", "10.1.0.3", **data)])  # fmt: skip
    for name in ("m1", "w1", "w2"):
        assert any("/etc/docker/certs.d/10.1.0.2:5000/ca.crt" in c for c in commands(planned[name])), name
    registry_node = " ".join(commands(planned["w1"]))
    assert (
        "install --no-install-recommends docker-registry" in registry_node or "install docker-registry" in registry_node
    )
    for file in ("config.yml", "registry.crt", "registry.key", "htpasswd"):
        assert f"/etc/docker/registry/{file}" in registry_node
    assert "docker login --username swarm --password-stdin 10.1.0.2:5000" in commands(planned["m1"])
    assert "docker-registry" not in " ".join(commands(planned["w2"]))


def test_controller_secrets_are_owner_only(tmp_path):
    import stat

    from pyinfra_swarm.pki import certificate_authority, write_private

    pki = tmp_path / "pki"
    pki.mkdir(mode=0o755)
    certificate_authority(pki)
    write_private(pki / "registry-password", "pw\n")
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in pki.iterdir()} == {
        "ca.crt": 0o644, "ca.key": 0o600, "registry-password": 0o600}  # fmt: skip


def test_a_build_context_leaves_out_what_its_dockerignore_says(tmp_path):
    for name in ("Dockerfile", "app.py", ".env", ".git/config", "docs/a.md", "docs/keep.md", "src/x/y.pyc", "b.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".dockerignore").write_text("# secrets stay home\n.env\n/.git\ndocs\n!docs/keep.md\n**/*.pyc\n*.log\n"
                                            "Dockerfile\n")  # fmt: skip
    archive, digest = context_archive(tmp_path)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = sorted(tar.getnames())
    assert names == [".dockerignore", "Dockerfile", "app.py", "docs/keep.md"]
    (tmp_path / ".env").write_text("changed")
    assert context_archive(tmp_path)[1] == digest  # what is left out doesn't change the context
