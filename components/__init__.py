"""The ray-cluster component package: its inputs (from stack config or a package consumer), their validation into
settings, pure pod builders, and the RayCluster resource."""

from .inputs import RayClusterArgs, from_stack_config
from .ray_cluster import RayCluster
from .settings import ClusterSettings, load_settings

__all__ = ["ClusterSettings", "RayCluster", "RayClusterArgs", "from_stack_config", "load_settings"]
