#!/usr/bin/env python3
"""Writes the controller's OCI image archive from the release `sluice` binary.

    scripts/build-image.py --binary target/release/sluice --out target/image

No daemon, no registry, no base image: the image's one layer is a root made here, laid
out as distroless images are, of exactly what the binary needs at run time:

  /usr/local/bin/sluice                   the binary, the entrypoint
  <each shared library `ldd` names>       at the path the loader looks for it (glibc,
                                          libm, libgcc_s and the loader itself)
  /etc/ssl/certs/ca-certificates.crt      Debian's `ca-certificates` bundle (the package's
                                          own certificates only, never a host's local CAs)
  /etc/passwd, /etc/group                 root, nonroot (65532) and nobody
  /etc/nsswitch.conf                      `hosts: files dns` (glibc >= 2.34 has the files
                                          and dns NSS modules inside libc.so.6)
  /tmp                                    1777, for runs without the chart's emptyDir
  /home/nonroot                           the user's home (what runtimes set HOME to)
  /usr/share/doc/<package>/copyright      the licences of the Debian files shipped

The image runs as 65532:65532; its entrypoint is the binary, its default argument
`controller`. Labels: `org.opencontainers.image.*` (title, description, version from
Cargo.toml, revision from git, licenses, created; source from $SLUICE_IMAGE_SOURCE,
Cargo.toml's `repository` or git's `origin` as an https URL without credentials).

Reproducible: every timestamp is SOURCE_DATE_EPOCH (default: the commit's time), tar
entries are sorted, owned by root (but /home/nonroot) with fixed modes, gzip headers
carry no name or time. The same binary and the same Debian files give the same digest,
and the same commit and Rust toolchain give the same binary: Cargo embeds the crate's
own paths relative to the checkout (the registry's under $CARGO_HOME), so a clone at
another path with an empty target directory built the identical archive.

Writes <out>/sluice-<version>.oci.tar (an OCI image layout in a tar, tagged <version>)
and <out>/sluice-<version>.digest (the manifest's digest, as registries report it).
Standard library only.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UID = 65532
ENTRYPOINT = "/usr/local/bin/sluice"
CA_PACKAGE = "ca-certificates"
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}

PASSWD = """root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
"""
GROUP = """root:x:0:
nobody:x:65534:
nonroot:x:65532:
"""
NSSWITCH = """passwd:   files
group:    files
shadow:   files
hosts:    files dns
networks: files
protocols: files
services: files
"""


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def run(*args, cwd=None):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def shared_libraries(binary):
    """(path inside the image, file on this machine) for the loader and each library."""
    try:
        output = run("ldd", str(binary))
    except (RuntimeError, FileNotFoundError) as e:
        fail(f"ldd {binary}: {e}")
    libraries = []
    for line in output.splitlines():
        line = line.strip()
        if "not found" in line:
            fail(f"{binary} needs a library this machine lacks: {line}")
        match = re.match(r"(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$", line)
        if match:
            libraries.append(match.group(1))
        elif not line.startswith("linux-vdso") and not line.startswith("statically linked"):
            fail(f"unexpected line from ldd {binary}: {line!r}")
    return sorted(libraries)


def owning_package(path):
    """The Debian package that installed `path` (its name without the architecture)."""
    for candidate in (path, os.path.realpath(path)):
        try:
            output = run("dpkg-query", "--search", candidate)
        except (RuntimeError, FileNotFoundError):
            continue
        return output.split(":", 1)[0].strip()
    return None


def package_version(package):
    try:
        return run("dpkg-query", "--show", "--showformat=${Version}", package).strip()
    except (RuntimeError, FileNotFoundError):
        return None


def ca_bundle():
    """Debian's bundle from the package's own certificate files, in name order (what
    update-ca-certificates writes with every certificate selected and no local ones)."""
    try:
        files = run("dpkg-query", "--listfiles", CA_PACKAGE).split()
    except (RuntimeError, FileNotFoundError) as e:
        fail(f"the Debian package {CA_PACKAGE} is not installed ({e}); "
             f"apt-get install {CA_PACKAGE}")
    certificates = sorted(f for f in files
                          if f.startswith("/usr/share/ca-certificates/") and f.endswith(".crt"))
    if not certificates:
        fail(f"the package {CA_PACKAGE} lists no certificates")
    text = "".join(Path(f).read_text().rstrip("\n") + "\n" for f in certificates)
    return text.encode(), len(certificates)


class Layer:
    """A tar of files and directories, written sorted and with fixed metadata."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # path -> (mode, owner, bytes or None for a directory)

    def directory(self, path, mode=0o755, owner=0):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self.entries:
                last = i == len(parts)
                self.entries[parent] = (mode if last else 0o755, owner if last else 0, None)

    def file(self, path, data, mode=0o644):
        path = path.strip("/")
        if "/" in path:
            self.directory(path.rsplit("/", 1)[0])
        if path in self.entries:
            fail(f"two files at /{path}")
        self.entries[path] = (mode, 0, data)

    def tar(self):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries):
                mode, owner, data = self.entries[path]
                info = tarfile.TarInfo(path if data is not None else path + "/")
                info.mtime = self.mtime
                info.mode = mode
                info.uid = info.gid = owner
                info.uname = info.gname = "root" if owner == 0 else "nonroot"
                if data is None:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return out.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as z:
        z.write(data)
    return out.getvalue()


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def git(*args):
    try:
        return run("git", *args, cwd=REPO).strip()
    except (RuntimeError, FileNotFoundError):
        return None


def public_url(remote):
    """A git remote as a browsable https URL without credentials; None for a local path."""
    if not remote:
        return None
    remote = remote.strip()
    scp = re.match(r"^[\w.-]+@([\w.-]+):(?!/)(.+)$", remote)
    if scp:
        host, path = scp.groups()
    else:
        url = re.match(r"^(?:https?|ssh|git)://(?:[^@/]*@)?([^/:]+)(?::\d+)?/(.+)$", remote)
        if not url:
            return None
        host, path = url.groups()
    if path.endswith(".git"):
        path = path[: -len(".git")]
    return f"https://{host}/{path.strip('/')}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", required=True, type=Path, help="the release sluice binary")
    parser.add_argument("--out", required=True, type=Path, help="directory for the archive")
    args = parser.parse_args()

    if not args.binary.is_file() or not os.access(args.binary, os.X_OK):
        fail(f"--binary {args.binary}: no executable there; run `cargo build --release` first")
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]
    version = cargo["version"]

    revision = git("rev-parse", "HEAD")
    if revision is None:
        fail("not a git checkout: the image's revision label and timestamps come from the commit")
    if git("status", "--porcelain", "--untracked-files=no"):
        print(f"warning: the working tree differs from {revision}: revision label "
              f"{revision}-dirty, and the image is not what that commit builds", file=sys.stderr)
        revision += "-dirty"
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct")
    try:
        epoch = int(epoch)
    except (TypeError, ValueError):
        fail(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, not {epoch!r}")
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    source = (os.environ.get("SLUICE_IMAGE_SOURCE") or cargo.get("repository")
              or public_url(git("remote", "get-url", "origin")))
    machine = platform.machine()
    if machine not in ARCHITECTURES:
        fail(f"no OCI architecture known for {machine}")

    # Before 2.34 glibc loads its NSS modules (libnss_files, libnss_dns) with dlopen, so
    # ldd does not list them and names would not resolve in the image.
    libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else ""
    match = re.match(r"glibc (\d+)\.(\d+)", libc or "")
    if not match or (int(match.group(1)), int(match.group(2))) < (2, 34):
        fail(f"this machine's C library is {libc or 'not glibc'}: the image needs glibc >= 2.34 "
             "(Debian 12 has 2.36), whose name resolution is inside libc.so.6")

    layer = Layer(epoch)
    layer.file(ENTRYPOINT, args.binary.read_bytes(), 0o755)
    packages = {CA_PACKAGE}
    for library in shared_libraries(args.binary):
        layer.file(library, Path(library).read_bytes(), 0o755)
        package = owning_package(library)
        if package is None:
            fail(f"{library} belongs to no Debian package: its licence cannot be shipped")
        packages.add(package)
    bundle, count = ca_bundle()
    layer.file(CA_BUNDLE, bundle)
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    layer.file("etc/nsswitch.conf", NSSWITCH.encode())
    layer.directory("tmp", 0o1777)
    layer.directory("home/nonroot", 0o700, owner=UID)
    for package in sorted(packages):
        copyright_file = Path("/usr/share/doc") / package / "copyright"
        if not copyright_file.is_file():
            fail(f"{copyright_file} is missing: the licence of {package} cannot be shipped")
        layer.file(str(copyright_file), copyright_file.read_bytes())

    tar = layer.tar()
    compressed = gzip_bytes(tar)
    labels = {
        "org.opencontainers.image.title": "sluice",
        "org.opencontainers.image.description": cargo["description"],
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.licenses": cargo["license"],
        "org.opencontainers.image.created": created,
    }
    if source:
        labels["org.opencontainers.image.source"] = source
    else:
        print("warning: no org.opencontainers.image.source label: SLUICE_IMAGE_SOURCE is "
              "unset, Cargo.toml has no `repository` and git's `origin` is no URL",
              file=sys.stderr)
    versions = ", ".join(f"{p} {package_version(p)}" for p in sorted(packages))
    config = canonical({
        "created": created,
        "architecture": ARCHITECTURES[machine],
        "os": "linux",
        "config": {
            "User": f"{UID}:{UID}",
            "Entrypoint": [ENTRYPOINT],
            "Cmd": ["controller"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [digest(tar)]},
        "history": [{
            "created": created,
            "created_by": "scripts/build-image.py",
            "comment": f"sluice {version} with {count} CA certificates; from Debian: {versions}",
        }],
    })
    layer_descriptor = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": digest(compressed),
        "size": len(compressed),
    }
    manifest = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(config),
            "size": len(config),
        },
        "layers": [layer_descriptor],
        "annotations": labels,
    })
    manifest_digest = digest(manifest)
    index = canonical({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest),
            # The tag for skopeo and umoci (`oci-archive:FILE:TAG`), and the name
            # containerd (`kind load image-archive`, `ctr images import`) gives it: the
            # chart's default image, `sluice:<appVersion>`.
            "annotations": {
                "org.opencontainers.image.ref.name": version,
                "io.containerd.image.name": f"docker.io/library/sluice:{version}",
            },
        }],
    })

    archive = Layer(epoch)
    archive.file("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
    archive.file("index.json", index)
    for blob in (config, manifest, compressed):
        archive.file("blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)

    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"sluice-{version}.oci.tar"
    partial = target.with_suffix(".tar.partial")
    partial.write_bytes(archive.tar())
    partial.replace(target)
    (args.out / f"sluice-{version}.digest").write_text(manifest_digest + "\n")
    print(f"{target}: {manifest_digest}")
    print(f"  layer {len(compressed) / 1e6:.1f} MB compressed, {len(tar) / 1e6:.1f} MB "
          f"unpacked; binary {args.binary.stat().st_size / 1e6:.1f} MB; {count} CA certificates")


if __name__ == "__main__":
    main()
