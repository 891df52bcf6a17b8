"""Read the stack config, declare the Ray cluster, export how to reach it."""

import pulumi

from components import RayCluster, load_settings

# The component's name prefixes every logical name: fixed, so that no config change (not even `clusterName`) moves
# a resource to a new URN. Stacks made before it was fixed named it after `clusterName`; the alias carries them
# (and, by Pulumi's child-alias rule, every child named `<name>-...`) over without a replacement.
COMPONENT_NAME = "ray"

config = pulumi.Config()
settings = load_settings(config, pulumi.get_project(), pulumi.get_stack())
aliases = [pulumi.Alias(name=settings.cluster_name)] if settings.cluster_name != COMPONENT_NAME else []
cluster = RayCluster(
    COMPONENT_NAME,
    settings,
    auth_token=config.get_secret("authToken"),
    redis_password=config.get_secret("redisPassword"),
    opts=pulumi.ResourceOptions(aliases=aliases),
)

pulumi.export("namespace", cluster.namespace)
pulumi.export("headServiceDns", cluster.head_service_dns)
pulumi.export("gcsAddress", cluster.gcs_address)
pulumi.export("rayClientAddress", cluster.client_address)
pulumi.export("dashboardUrl", cluster.dashboard_url)
pulumi.export("portForwardCommand", cluster.port_forward_command)
pulumi.export("image", cluster.image)
pulumi.export("workerReplicas", cluster.worker_replicas)
pulumi.export("authTokenSecret", cluster.auth_secret_name)
pulumi.export("gcsStorageNamespace", cluster.gcs_storage_namespace)
