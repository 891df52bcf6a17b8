"""The ray-cluster component package: its inputs (from stack config or a package consumer), their validation into
settings, pure pod builders, and the RayCluster resource."""

from .config.inputs import RayClusterArgs, from_stack_config
from .config.settings import ClusterSettings, load_settings
from .ray_cluster import RayCluster

__all__ = ["ClusterSettings", "RayCluster", "RayClusterArgs", "from_stack_config", "load_settings"]
