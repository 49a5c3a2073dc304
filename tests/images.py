"""Container images for tests on lab nodes: a tiny busybox image, imported with podman.

No registry is reachable from the lab, so the image is built here from Debian's
`busybox-static` (one static binary, its applets as symlinks) and streamed over SSH into
`podman import` on the node that needs it.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from gitorch.nodes.lab import Lab, ssh_command

BUSYBOX = Path("/bin/busybox")
IMAGE = "localhost/gitorch-busybox:1"
INDEX_HTML = "hello from gitorch-busybox\n"
"""What the image's `httpd -h /www` serves at `/`."""
APPLETS = ("sh", "httpd", "echo", "sleep", "cat", "env", "ls", "ps", "wget", "true", "false")
PODMAN = ("podman", "--runtime", "runc")
TIMEOUT = 60.0


def require_podman() -> None:
    """Skip the calling test when this machine cannot run podman in lab nodes; in CI, fail."""
    missing = [
        f"{tool} (apt-get install -y {package})"
        for tool, package in (("podman", "podman"), ("runc", "runc"))
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None
    ]
    if not _is_static(BUSYBOX):
        missing.append(f"a static {BUSYBOX} (apt-get install -y busybox-static)")
    if missing:
        reason = "container images unavailable: this machine lacks " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must not skip image tests)", pytrace=False)
        pytest.skip(reason)


def _is_static(path: Path) -> bool:
    """Whether `path` is an ELF executable without a program interpreter (PT_INTERP)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:  # 64-bit little-endian only
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    types = [int.from_bytes(data[phoff + i * phentsize : phoff + i * phentsize + 4], "little") for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def busybox_rootfs(index_html: str = INDEX_HTML) -> bytes:
    """A root filesystem tarball: /bin/busybox, applet symlinks, /www/index.html, /tmp."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add(name: str, *, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755, data: bytes = b"") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.size = kind, mode, len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "dev", "etc", "proc", "sys", "www"):
            add(d)
        add("tmp", mode=0o1777)
        add("bin/busybox", kind=tarfile.REGTYPE, data=BUSYBOX.read_bytes())
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
        add("www/index.html", kind=tarfile.REGTYPE, mode=0o644, data=index_html.encode())
        add("etc/passwd", kind=tarfile.REGTYPE, mode=0o644, data=b"root:x:0:0:root:/:/bin/sh\n")
    return out.getvalue()


def podman(lab: Lab, node: str, *args: str, stdin: bytes = b"", check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `podman --runtime runc ARGS` on a lab node over SSH; fail the test on error."""
    proc = subprocess.run(
        ssh_command(lab, node, [*PODMAN, *args]), input=stdin, capture_output=True, timeout=TIMEOUT, check=False
    )
    result = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{node}: podman {' '.join(args)} exited {proc.returncode}: {result.stderr.strip()}", pytrace=False)
    return result


def import_image(lab: Lab, node: str, ref: str = IMAGE, index_html: str = INDEX_HTML) -> str:
    """`podman import` the busybox rootfs as `ref` on `node`; returns the image id."""
    return podman(lab, node, "import", "--quiet", "-", ref, stdin=busybox_rootfs(index_html)).stdout.strip()


def remove_image(lab: Lab, node: str, ref: str = IMAGE) -> None:
    """Remove every container on `node`, then the image `ref` (no error if it is gone)."""
    podman(lab, node, "rm", "--all", "--force", "--time", "0", check=False)
    podman(lab, node, "rmi", "--force", "--ignore", ref, check=False)


def containers(lab: Lab, node: str) -> list[str]:
    """Names of all containers on `node`, running or not (`podman ps -a`)."""
    return podman(lab, node, "ps", "--all", "--format", "{{.Names}}").stdout.split()
