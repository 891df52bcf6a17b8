"""The ray-cluster component package: settings from stack config, pure pod builders, the RayCluster resource."""

from .ray_cluster import RayCluster
from .settings import ClusterSettings, load_settings

__all__ = ["ClusterSettings", "RayCluster", "load_settings"]
