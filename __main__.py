"""Read the stack config, declare the Ray cluster, export how to reach it."""

import pulumi

from components import RayCluster, load_settings

config = pulumi.Config()
settings = load_settings(config, pulumi.get_stack())
cluster = RayCluster(settings.cluster_name, settings, auth_token=config.get_secret("authToken"))

pulumi.export("namespace", cluster.namespace)
pulumi.export("headServiceDns", cluster.head_service_dns)
pulumi.export("gcsAddress", cluster.gcs_address)
pulumi.export("rayClientAddress", cluster.client_address)
pulumi.export("dashboardUrl", cluster.dashboard_url)
pulumi.export("portForwardCommand", cluster.port_forward_command)
pulumi.export("image", cluster.image)
pulumi.export("workerReplicas", cluster.worker_replicas)
pulumi.export("authTokenSecret", cluster.auth_secret_name)
