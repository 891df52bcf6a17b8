"""Pure builders, run by `pulumi up`: the Kubernetes manifests of the cluster's objects as dicts, from its settings
(components/config). They declare no resource (components/ray_cluster.py does) and can be tested without Pulumi."""
