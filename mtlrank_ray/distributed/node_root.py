"""A local cluster node's view of the machine: a filesystem root of its own.

A cloud worker shares no disk with the head, so nothing the driver wrote
(the run folder, the data, a store under /tmp) may be readable from a local
worker node either. Each worker node runs in a new mount namespace whose root
holds only what a node image holds: the system's folders (/usr, /etc, /lib,
/proc, /sys, /dev), this Python and its environment, and the package's source
(bound read-only), with an empty /tmp and /dev/shm of its own. The run and
data folders are absent wherever they are on the host.

    python -m mtlrank_ray.distributed.node_root --keep PATH ... -- COMMAND ...

is what `node_root_command` wraps a command in; it needs Linux, `unshare`
(util-linux) and root or unprivileged user namespaces.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/sys", "/dev")
PACKAGE = Path(__file__).resolve().parents[1]


class ClusterUnavailable(RuntimeError):
    """This machine cannot host the local cluster (no Linux mount namespaces, no `weed`)."""


def code_paths() -> list[str]:
    """What a node needs of this machine besides the system: the interpreter's
    installation, its environment, and the package's source (not the checkout around it)."""
    paths = {str(Path(p).resolve()) for p in (sys.base_prefix, sys.prefix, PACKAGE)}
    return sorted(paths, key=len)  # a folder before what lies inside it


def node_root_command(command: list[str]) -> list[str]:
    """`command` run in a new mount namespace, in a root of its own (the module's docstring)."""
    inner = [sys.executable, "-m", "mtlrank_ray.distributed.node_root",
             *[arg for path in code_paths() for arg in ("--keep", path)], "--", *command]
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "--", *inner]


def _mount(*args: str, fds: tuple[int, ...] = ()) -> None:
    subprocess.run(["mount", *args], check=True, pass_fds=fds)


def enter_node_root(keep: list[str], command: list[str]) -> None:
    """(Inside the new namespace) build the node's root under a private /tmp, chroot, exec."""
    # Held open first: a kept path under /tmp (a CI checkout) is covered by the next mount.
    held = {path: os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in keep}
    _mount("-t", "tmpfs", "tmpfs", "/tmp")
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    for path in SYSTEM:
        if os.path.islink(path):  # merged /usr: /bin -> usr/bin
            os.symlink(os.readlink(path), root / path.lstrip("/"))
        elif os.path.isdir(path):
            (root / path.lstrip("/")).mkdir(parents=True)
            _mount("--rbind", path, str(root / path.lstrip("/")))
    # Before the kept paths: one under /tmp (a CI checkout) goes inside the private /tmp.
    for private in ("tmp", "dev/shm"):
        (root / private).mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "tmpfs", str(root / private))
    for path, fd in held.items():
        target = root / path.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        # --no-canonicalize: the held directory, not its old path (now under the new tmpfs)
        _mount("--no-canonicalize", "--bind", f"/proc/self/fd/{fd}", str(target), fds=(fd,))
        os.close(fd)
    os.chroot(root)
    os.chdir("/")
    os.execvp(command[0], command)


def check_namespaces() -> None:
    """Raise ClusterUnavailable unless this machine can give a process a root of its own
    that hides the host's /tmp and the checkout around the package but runs it."""
    if not sys.platform.startswith("linux") or __import__("shutil").which("unshare") is None:
        raise ClusterUnavailable("needs Linux with `unshare` (util-linux) for a private root per node")
    hidden = [PACKAGE.parent / entry for entry in os.listdir(PACKAGE.parent)
              if not str(PACKAGE.parent / entry).startswith(sys.prefix) and entry != PACKAGE.name]
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="mtlrank-probe-") as marker:
        paths = [marker.name, *map(str, hidden[:5])]
        probe = subprocess.run(node_root_command([
            sys.executable, "-c", f"import os, sys, mtlrank_ray; sys.exit(any(map(os.path.exists, {paths!r})))"]),
            capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise ClusterUnavailable("cannot give a process a root of its own (unshare --mount): "
                                 f"{probe.stderr.strip()[-300:] or 'host paths stayed visible'}")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    split = arguments.index("--")
    enter_node_root(arguments[:split][1::2], arguments[split + 1:])
