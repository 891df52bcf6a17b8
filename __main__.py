"""Read the stack config, declare the Ray cluster, export how to reach it."""

import pulumi

from components import RayCluster, from_stack_config

# The component's name prefixes every logical name: fixed, so that no config change (not even `clusterName`) moves
# a resource to a new URN. Stacks made before it was fixed named it after `clusterName`; the alias carries them
# (and, by Pulumi's child-alias rule, every child named `<name>-...`) over without a replacement.
COMPONENT_NAME = "ray"

args = from_stack_config(pulumi.Config())
cluster_name = args["clusterName"]
aliases = [pulumi.Alias(name=cluster_name)] if cluster_name != COMPONENT_NAME else []
cluster = RayCluster(COMPONENT_NAME, args, opts=pulumi.ResourceOptions(aliases=aliases))

for output_name, value in cluster.stack_outputs().items():
    pulumi.export(output_name, value)
