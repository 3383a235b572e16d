"""Package source operations: an apt repository added only once it has proven itself."""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from pyinfra_swarm.facts import FileHashes, read, sha256_text

KEYRINGS = "/etc/apt/keyrings"
DISABLED = ".pyinfra-swarm-disabled"  # the suffix of another source for the same URL, moved aside


def source_paths(filename: str) -> tuple[str, str]:
    """Where the source FILENAME and its key live."""
    return f"/etc/apt/sources.list.d/{filename}.sources", f"{KEYRINGS}/{filename}.asc"


def deb822_source(url: str, suite: str, component: str, arch: str, key: str) -> str:
    """The .sources file of one signed apt repository."""
    return (
        f"Types: deb\nURIs: {url}\nSuites: {suite}\nComponents: {component}\nArchitectures: {arch}\nSigned-By: {key}\n"
    )


def _fail(message: str, show: str = "grep -E '^(E|W|Err):' \"$tmp/out\"") -> str:
    """Shell run when a check fails: the message, then what the command said."""
    return f"{{ echo {shlex.quote(message)} >&2; {show} >&2; exit 1; }}"


def check_script(url: str, suite: str, component: str, arch: str, package: str, version: str | None,
                 setting: str) -> str:  # fmt: skip
    """Shell that fetches the repository's key into $tmp/key.asc and proves, with apt's own lists and cache
    kept apart from the host's, that the repository is signed by it and holds `package` (at `version`, a
    trailing `*` matching a prefix). It fails with what apt said, before anything on the host changes."""
    where = f"{url} ({suite}/{component}, {arch})"
    lines = deb822_source(url, suite, component, arch, "KEY").splitlines()
    source = " ".join(shlex.quote(line) for line in lines[:-1]) + ' "Signed-By: $tmp/key.asc"'
    want = shlex.quote(version or "")
    apt = (
        '-o Dir::Etc::SourceList="$tmp/check.sources" -o Dir::Etc::SourceParts="$tmp/none" '
        '-o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o APT::Sandbox::User=root'
    )
    unchanged = f"nothing was changed; check {setting}"
    return "\n".join([
        "tmp=$(mktemp -d) && trap 'rm -rf \"$tmp\"' EXIT",
        'mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/none"',
        f'curl -fsSL --retry 2 --max-time 60 -o "$tmp/key.asc" {shlex.quote(url + "/gpg")} 2>"$tmp/out" || '
        + _fail(f"can't fetch the signing key {url}/gpg: {unchanged}:", show='cat "$tmp/out"'),
        f"printf '%s\\n' {source} > \"$tmp/check.sources\"",
        f'apt-get {apt} update -q >"$tmp/out" 2>&1 || '
        + _fail(f"the apt repository {where} failed (a wrong key, or not reachable): {unchanged}. apt said:"),
        f'apt-cache {apt} madison {package} >"$tmp/found" 2>>"$tmp/out"',
        'grep -q . "$tmp/found" || '
        + _fail(f"the apt repository {where} has no {package} (or its signature did not verify): {unchanged}."),
        f"[ -z {want} ] || awk -F ' [|] ' -v want={want} '{{gsub(/ /, \"\", $2)}} "
        "(want ~ /[*]$/ ? index($2, substr(want, 1, length(want) - 1)) == 1 : $2 == want) {found = 1} "
        "END {exit !found}' \"$tmp/found\" || "
        + _fail(f"version {version} of {package} is not in {where} ({unchanged}); it has:",
                show="awk -F ' [|] ' '{print \"  \" $2}' \"$tmp/found\""),
    ])  # fmt: skip


@operation()
def signed_apt_source(filename: str, url: str, suite: str, component: str, arch: str, package: str,
                      version: str | None = None, setting: str = "the repository's URL"):  # fmt: skip
    """Add apt repository `url` as /etc/apt/sources.list.d/FILENAME.sources, signed by the key at `url`/gpg
    (kept in /etc/apt/keyrings/FILENAME.asc), once the repository proves itself: its key fetches, its index
    verifies with that key and holds `package` (at `version`). Until then nothing on the host changes, so a
    wrong key or an unreachable mirror can't break the host's apt. Other sources for the same URL (an older
    setup with another Signed-By, which makes every `apt-get update` fail) are moved aside (`*.pyinfra-swarm-disabled`).

    + filename: base name of the .sources and key files
    + url: the repository's base URL (the key is at `url`/gpg)
    + suite, component, arch: what the source lists
    + package: a package the repository must hold
    + version: the version of `package` it must hold (a trailing `*` matches a prefix)
    + setting: what the user sets to change `url`, named in errors

    **Example:**

    .. code:: python

        packages.signed_apt_source(filename="docker", url="https://download.docker.com/linux/debian",
                                   suite="bookworm", component="stable", arch="amd64", package="docker-ce")
    """
    dest, key = source_paths(filename)
    source = deb822_source(url, suite, component, arch, key)
    found = read(FileHashes, paths=[dest, key])
    if found.get(dest) == sha256_text(source) and found.get(key):
        host.noop(f"apt source {dest} is in place")
        return
    yield "\n".join([
        "set -e",
        check_script(url, suite, component, arch, package, version, setting),
        f"for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do "
        f'[ -f "$f" ] && [ "$f" != {dest} ] && grep -qF {shlex.quote(url)} "$f" || continue; '
        f'mv "$f" "$f{DISABLED}"; echo "moved aside $f (another source for {url})"; done',
        f"install -d -m 0755 {KEYRINGS}",
        f'install -m 0644 "$tmp/key.asc" {key}',
        f"printf '%s' {shlex.quote(source)} > {dest}.new && chmod 0644 {dest}.new && mv {dest}.new {dest}",
    ])  # fmt: skip
