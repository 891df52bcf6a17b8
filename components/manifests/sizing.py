"""How a pod's memory is split between Ray's object store, `/dev/shm` and Ray's own accounting, and the smallest
pod Ray can start in. Kept apart from the pod builders so that the settings can refuse what Ray would refuse.
"""

from __future__ import annotations

import math
from decimal import Decimal

MIB = 2**20
# Ray's own default object store share is 30% of memory; /dev/shm gets a little more so the store always fits
# (Ray falls back to a slow disk-backed store when /dev/shm is smaller), and both count against the memory limit.
OBJECT_STORE_FRACTION = Decimal("0.30")
SHM_FRACTION = Decimal("0.35")
# `ray start` refuses an object store below this (ray/_private/ray_constants.py OBJECT_STORE_MINIMUM_MEMORY_BYTES,
# checked in ray/_private/services.py); a test holds it equal to the installed Ray's.
RAY_MIN_OBJECT_STORE_BYTES = 75 * MIB
# Below this a head still starts, but the GCS, dashboard, Ray Client server, raylet and agents alone use about
# 1 GiB before any work arrives: the head is the most reported OOM kill.
RECOMMENDED_HEAD_MEMORY_BYTES = 2 * 1024 * MIB


def object_store_bytes(pod_memory_bytes: int) -> int:
    return int(pod_memory_bytes * OBJECT_STORE_FRACTION)


def shm_bytes(pod_memory_bytes: int) -> int:
    """Whole MiB, so the emptyDir's sizeLimit reads as `<n>Mi`."""
    return int(pod_memory_bytes * SHM_FRACTION) // MIB * MIB


def min_pod_memory_bytes() -> int:
    """The smallest pod memory whose object store share Ray accepts."""
    return math.ceil(Decimal(RAY_MIN_OBJECT_STORE_BYTES) / OBJECT_STORE_FRACTION)
