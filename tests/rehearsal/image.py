"""The stand-in for the Ray image: its filesystem and its config, as `docker inspect rayproject/ray` shows them.

The official image runs as `ray` (uid 1000, gid 100) with HOME and WORKDIR /home/ray, conda in
/home/ray/anaconda3 and that conda's bin first on PATH, and /home/ray owned by ray. The stand-in is a virtualenv
with only ray[default] at the image's version, which scripts/test builds outside /tmp (pods mount their own /tmp
over whatever is there). Each container start gets a fresh writable layer holding the image's /home (a runtime
creates a new container, with a new layer, for every start), and the virtualenv is bind-mounted onto its
anaconda3, so Python started as /home/ray/anaconda3/bin/python finds the virtualenv's site-packages (its
pyvenv.cfg sits next to bin/). PATH names only that path, never the virtualenv's own: a volume mounted over
/home/ray hides `ray` and the virtualenv's `python`, exactly as it hides conda in the real image. The image's
/etc/passwd names uid 1000 `ray`.

Not emulated: the virtualenv is read-only in every container (the real image's conda, owned by ray, is writable
without `readOnlyRootFilesystem`); it is the one copy every pod shares, and copy-on-write layers are not worth
their portability cost here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

ROOT = Path(os.environ.get("RAY_REHEARSAL_IMAGE", "/opt/ray-cluster-rehearsal/image"))
USER, GROUP = 1000, 100
HOME = PurePosixPath("/home/ray")
CONDA = HOME / "anaconda3"
WORKDIR = HOME
ENV = {"PATH": f"{CONDA}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(HOME)}
# The layer's top directory: the part of the image's tree that the stand-in provides itself.
LAYER_TOP = HOME.parent
_PASSWD_ENTRY = f"ray:x:{USER}:{GROUP}::{HOME}:/bin/bash"


def passwd(host: str) -> str:
    """The image's /etc/passwd: this machine's, with the image's `ray` in place of whoever holds its uid here, so
    `whoami` and `~ray` answer as in the image."""
    entries = [line.split(":") for line in host.splitlines() if line]
    kept = [":".join(entry) for entry in entries if entry[0] != "ray" and entry[2:3] != [str(USER)]]
    return "\n".join([*kept, _PASSWD_ENTRY]) + "\n"


def fresh_layer(path: Path) -> Path:
    """A new writable layer for one container start at `path` (the last start's is discarded): the image's /home
    with ray's home (1000:100, 755) and the mount point of its conda; returns the directory to mount on LAYER_TOP."""
    shutil.rmtree(path, ignore_errors=True)
    top = path / LAYER_TOP.name
    home = top / HOME.relative_to(LAYER_TOP)
    (home / CONDA.relative_to(HOME)).mkdir(parents=True)
    top.chmod(0o755)
    for directory in (home, home / CONDA.relative_to(HOME)):
        os.chown(directory, USER, GROUP)
        directory.chmod(0o755)
    return top
