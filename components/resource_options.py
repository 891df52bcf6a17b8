"""How `pulumi up` treats each kind of the cluster's resources: the pulumi-kubernetes annotations and resource
options that decide who owns their fields, what the provider waits for (and how long) when it creates, updates
and deletes them, and what it replaces rather than updates. The why of each is the provider's or Kubernetes'
behaviour, stated where it is defined.
"""

from __future__ import annotations

from .manifests import ray_node, redis

# pulumi-kubernetes waits this long for any object to be ready or gone, unless told otherwise.
PROVIDER_WAIT_SECONDS = 10 * 60
# Ray images are several GB: the first pull alone can outlast pulumi-kubernetes' 10-minute default.
PULL_SECONDS = 20 * 60
# A Deployment is deleted in the foreground (pulumi-kubernetes' default), so the delete waits for its pods, and a
# Namespace waits for everything in it: each pod may take its grace period to stop (a worker its drain, up to an
# hour). The delete waits that long and a little more (the garbage collector, a finalizer), never less than the
# provider's own default.
DELETE_MARGIN_SECONDS = 120
POD_DEFAULT_GRACE_SECONDS = 30
# The smoke test's own wait for the nodes, then up to 30 rounds of 200 calls (seconds each on a loaded cluster).
SMOKE_TEST_DEADLINE_SECONDS = ray_node.SMOKE_NODE_WAIT_SECONDS + 300
# Every field Pulumi sets is Pulumi's: a `kubectl scale` (which owns spec.replicas through the scale subresource)
# would otherwise make the next apply fail with a field-manager conflict. Fields Pulumi does not set stay with
# whoever set them.
PULUMI_OWNS_ITS_FIELDS = {"pulumi.com/patchForce": "true"}
# The pod templates' annotations are left to whoever sets them: `kubectl rollout restart` stamps one there, which the
# provider would take over on its next apply and drop, restarting every pod a second time. (The annotation's own
# path cannot be ignored: the provider splits ignore paths at every dot, and its key has dots.) What must roll pods
# when it changes goes into labels instead.
POD_TEMPLATE_ANNOTATIONS = "spec.template.metadata.annotations"
# A claim of a WaitForFirstConsumer StorageClass (most clouds' default) binds only once its pod is scheduled, and
# the provider, which cannot read the binding mode of a claim that names no class, would wait for Bound before it
# creates that pod: a deadlock until its 5-minute await fails `pulumi up`. The Redis Deployment's own await
# requires its claims to be Bound, so nothing goes unchecked.
CLAIM_BINDS_WITH_ITS_POD = {"pulumi.com/skipAwait": "true"}
# A renamed cluster's Redis is a new Deployment, made before the old one is deleted: on the same claim (its name is
# kept, its labels updated) the two pods would mount one ReadWriteOnce volume at once, which fails to attach on a
# cluster of many nodes and runs two Redis servers on one append-only file on one. The claim is replaced instead: the
# renamed cluster starts on a new, empty volume (its state in Redis is new anyway: a new storage namespace), and the
# old claim goes after the old Redis.
CLAIM_OF_ONE_CLUSTER = f'metadata.labels["{redis.CLUSTER_LABEL}"]'
# A failed smoke-test Job is replaced by the next `pulumi up` (so it runs again) instead of awaited again.
RETRY_FAILED_JOB = {"pulumi.com/replaceUnready": "true"}
# Ray's autoscaler owns an autoscaled Deployment's replicas (through its scale subresource): Pulumi sets them once,
# at creation, and then leaves them alone, or every `pulumi up` would undo the autoscaler's work. The annotation
# marks the Deployments so: when a group stops autoscaling it changes, so that `pulumi up` applies the Deployment
# and takes its replicas back (the engine would see no change in replicas it was last given).
AUTOSCALER_OWNS_REPLICAS = "spec.replicas"
# Nor does `pulumi up` wait for every replica of an autoscaled group: the autoscaler may have asked for workers the
# Kubernetes cluster has no room for yet (Pending until a node is added), and beside such pods a rollout of the
# group (no surge) stalls until room frees up, so the provider's await would run into its timeout and fail `pulumi
# up`. The smoke test, which waits for the group's least size, proves the cluster instead. (For a Deployment the
# annotation also skips the provider's wait after a delete; the deleted pods drain as they would anyway.)
AUTOSCALED = {"ray-cluster.pulumi.com/autoscaled": "true", "pulumi.com/skipAwait": "true"}


# The Serve Service has no selector: its endpoints are the keeper's to write, once the head runs it, and the Serve
# check (a Job) proves they route. (The provider's await of a Service would wait for endpoints that only come after
# the head it does not depend on.)
ENDPOINTS_WRITTEN_LATER = {"pulumi.com/skipAwait": "true"}
# A retirement Job runs for as long as the generations it retires drain: `pulumi up` returns once it is created.
RUNS_AFTER_UP = {"pulumi.com/skipAwait": "true"}
# A generation's head Service owns its autoscaler's objects, which its head pod needs before it starts: awaiting its
# endpoints (the head pod) before they are made would never end. Its workers and smoke test wait for the head
# themselves, and the clients' Service, which is awaited, moves only once the smoke test passed.
OWNS_WHAT_ITS_HEAD_NEEDS = {"pulumi.com/skipAwait": "true"}


def delete_timeout(grace_seconds: int) -> str:
    """How long `pulumi up` and `pulumi destroy` wait for a deleted object whose pods may each take `grace_seconds`
    to stop."""
    return f"{max(PROVIDER_WAIT_SECONDS, grace_seconds + DELETE_MARGIN_SECONDS)}s"
