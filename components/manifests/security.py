"""Pod Security Standard "restricted" for every pod of the cluster: the Ray pods and the stack's own Redis.

Nothing in Ray or Redis needs root, extra capabilities or a writable image. Each image's own user is named by number,
so that the kubelet can check runAsNonRoot before it starts the container.
"""

from __future__ import annotations

from typing import Any

# The official Ray image's user `ray` and its group `users`.
RAY_UID = 1000
RAY_GID = 100


def container_security(uid: int = RAY_UID, gid: int = RAY_GID, *, read_only: bool = True) -> dict[str, Any]:
    """No privilege escalation, no capabilities, a read-only image (unless a worker group needs it writable for its
    GPU runtime's hooks; "restricted" does not ask for it), as the image's own (non-root) user."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
    }


def pod_security(uid: int = RAY_UID, gid: int = RAY_GID) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
