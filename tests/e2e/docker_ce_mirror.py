"""A signed apt repository laid out like Docker's (`/debian/dists/<codename>/stable`, `/debian/gpg`), the way
air-gapped sites mirror download.docker.com, served over HTTP to the lab's nodes.

Docker's own packages can't be fetched here, so the packages are made for the test from Debian's engine
binaries (docker.io, containerd, runc, tini), split and named the way Docker splits them: `docker-ce`,
`docker-ce-cli`, `containerd.io` (with runc), and placeholder `docker-buildx-plugin`/`docker-compose-plugin`.
They carry Docker's version scheme (`5:20.10.24-1~debian.12~bookworm`) and Docker's conflicts, so apt
resolves a switch between sources exactly as it would with Docker's repository.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path

SOURCES = ["docker.io", "containerd", "runc", "tini"]  # Debian 12's packages the fake ones are made of
ARCH = "amd64"
CLIENT = ("/usr/bin/docker", "/usr/bin/docker-init")  # docker.io's files that docker-ce doesn't ship


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)}: exit {result.returncode}: {result.stderr}")
    return result


def _unpack(debs: Path, package: str, into: Path) -> Path:
    """Extract a downloaded Debian package's files and control scripts under `into/package`."""
    deb = next(debs.glob(f"{package}_*.deb"))
    root = into / package
    run("dpkg-deb", "-x", str(deb), str(root))
    run("dpkg-deb", "-e", str(deb), str(root / "DEBIAN"))
    return root


def _files(root: Path) -> dict[str, Path]:
    """An unpacked package's files (docs and control scripts left out): path in the package -> file."""
    found = {f"/{p.relative_to(root)}": p for p in root.rglob("*") if p.is_file()}
    return {path: file for path, file in found.items() if not path.startswith(("/DEBIAN/", "/usr/share/doc/"))}


def _build(work: Path, pool: Path, name: str, version: str, fields: dict[str, str], files: dict[str, Path],
           scripts: Path | None = None) -> None:  # fmt: skip
    """One .deb: `files` maps a path in the package to a file to copy there; `scripts` the control scripts
    (and conffiles) to reuse."""
    root = work / f"{name}-{version.replace(':', '_')}"
    (root / "DEBIAN").mkdir(parents=True)
    for target, source in files.items():
        path = root / target.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, path, follow_symlinks=True)
    (root / "usr/share/doc" / name).mkdir(parents=True, exist_ok=True)
    (root / "usr/share/doc" / name / "README").write_text(f"{name}: a test package of pyinfra-swarm\n")
    if scripts:
        for script in ["preinst", "postinst", "prerm", "postrm", "conffiles"]:
            if (scripts / script).exists():
                shutil.copy2(scripts / script, root / "DEBIAN" / script)
    control = {"Package": name, "Version": version, "Architecture": ARCH, "Maintainer": "pyinfra-swarm tests "
               "<tests@pyinfra-swarm.invalid>", **fields, "Description": f"{name} (test package)"}  # fmt: skip
    (root / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items() if v))
    run("dpkg-deb", "--root-owner-group", "-Znone", "--build", str(root), str(pool / f"{root.name}_{ARCH}.deb"))


def build_packages(pool: Path, versions: list[str], codename: str = "bookworm") -> None:
    """Docker-named packages, one set per engine version (`20.10.24`), from Debian 12's binaries."""
    work = Path(tempfile.mkdtemp(prefix="pyinfra-swarm-debs-"))
    try:
        debs = work / "debs"
        debs.mkdir()
        run("apt-get", "download", *SOURCES, cwd=debs)
        docker, containerd = _unpack(debs, "docker.io", work), _unpack(debs, "containerd", work)
        runc, tini = _unpack(debs, "runc", work), _unpack(debs, "tini", work)
        engine = {path: file for path, file in _files(docker).items() if path not in CLIENT}
        engine["/usr/bin/docker-init"] = tini / "usr/bin/tini-static"
        runtime = _files(containerd)
        runtime["/usr/bin/runc"] = runc / "usr/sbin/runc"
        distro = "debian.12" if codename == "bookworm" else "debian.13"
        _build(work, pool, "containerd.io", "1.6.20-1", {
            "Depends": "libc6, libseccomp2", "Provides": "containerd, runc", "Conflicts": "containerd, runc",
            "Replaces": "containerd, runc",
        }, runtime, containerd / "DEBIAN")  # fmt: skip
        for number in versions:
            version = f"5:{number}-1~{distro}~{codename}"
            _build(work, pool, "docker-ce-cli", version, {
                "Depends": "libc6", "Conflicts": "docker.io, docker-cli", "Replaces": "docker.io, docker-cli",
            }, {"/usr/bin/docker": docker / "usr/bin/docker"})  # fmt: skip
            _build(work, pool, "docker-ce", version, {
                "Depends": "containerd.io (>= 1.6), iptables, libc6, libdevmapper1.02.1, libsystemd0, adduser",
                "Recommends": "docker-ce-cli", "Conflicts": "docker.io, docker-engine",
                "Replaces": "docker.io, docker-engine",
            }, engine, docker / "DEBIAN")  # fmt: skip
            for plugin in ["docker-buildx-plugin", "docker-compose-plugin"]:
                _build(work, pool, plugin, f"{number}-1~{distro}~{codename}", {}, {})
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Signer:
    """An OpenPGP key of its own (a temporary GNUPGHOME), to sign a repository or to be the wrong key."""

    def __init__(self, name: str) -> None:
        self.home = tempfile.mkdtemp(prefix="psw-gpg-")  # short: gpg-agent's socket path has a length limit
        self.gpg = ["gpg", "--batch", "--homedir", self.home, "--pinentry-mode", "loopback", "--passphrase", ""]
        run(*self.gpg, "--quick-generate-key", f"{name} <{name}@pyinfra-swarm.invalid>", "ed25519", "sign", "never")

    def public_key(self) -> str:
        return run(*self.gpg, "--armor", "--export").stdout

    def sign(self, release: Path) -> None:
        run(*self.gpg, "--yes", "--clearsign", "-o", str(release.parent / "InRelease"), str(release))
        run(*self.gpg, "--yes", "-abs", "-o", str(release.parent / "Release.gpg"), str(release))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


def write_index(root: Path, signer: Signer, codename: str = "bookworm", channel: str = "stable") -> None:
    """Packages and a signed Release for `root/debian/pool/<channel>`, and the key at `root/debian/gpg`."""
    base = root / "debian"
    dist = base / "dists" / codename
    binary = dist / channel / f"binary-{ARCH}"
    binary.mkdir(parents=True, exist_ok=True)
    packages = run("dpkg-scanpackages", "-m", f"pool/{channel}", "/dev/null", cwd=base).stdout
    (binary / "Packages").write_text(packages)
    (binary / "Packages.gz").write_bytes(gzip.compress(packages.encode()))
    lines = [f"Origin: Docker\nLabel: Docker CE\nSuite: {codename}\nCodename: {codename}\n"
             f"Architectures: {ARCH}\nComponents: {channel}\nDate: {formatdate(usegmt=True)}\nSHA256:\n"]  # fmt: skip
    for index in sorted(binary.iterdir()):
        data = index.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {index.relative_to(dist)}\n")
    (dist / "Release").write_text("".join(lines))
    signer.sign(dist / "Release")
    (base / "gpg").write_text(signer.public_key())


@contextmanager
def serve(root: Path, address: str = "0.0.0.0") -> Iterator[int]:
    """Serve `root` over HTTP on a free port for the duration: yields the port."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer((address, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass
