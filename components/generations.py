"""A generation of the cluster (upgradeStrategy `generation`, docs/upgrades.md): its id, and the id in place of the
mark the pure builders leave where it goes.

The id is drawn from a digest of the Ray pods' templates as the builders make them with the mark (the token's
version among their labels, replicas left out), so it changes exactly when a change needs new Ray pods. It is an
Output (the token is a secret Output), which is why the builders cannot write it themselves. Every object of a
generation keeps its logical name and carries the id in its object's name, so a new generation replaces each of
them create-before-delete: Pulumi makes the new objects, and deletes the old ones only at the end of an update that
succeeded (an update that fails leaves them, and the next one that succeeds deletes them).
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_random as random

from .config.settings import GENERATION_ID_LENGTH, GENERATION_MARK


def generation_id(name: str, pod_templates: Mapping[str, Any], parent: pulumi.Resource) -> pulumi.Output[str]:
    """The id of the generation these pod templates make: drawn anew whenever one of them changes."""
    drawn = random.RandomId(
        f"{name}-generation",
        byte_length=GENERATION_ID_LENGTH // 2,
        keepers={"podTemplates": digest(pod_templates)},
        opts=pulumi.ResourceOptions(parent=parent),
    )
    hex_id: pulumi.Output[str] = drawn.hex
    return hex_id


def with_generation(value: Any, generation: pulumi.Output[str] | None) -> Any:
    """`value` (a manifest or a part of one) with the generation's id where the builders left the mark; as it is
    without generations."""
    if generation is None:
        return value
    if isinstance(value, str) and GENERATION_MARK in value:
        return generation.apply(lambda hex_id: value.replace(GENERATION_MARK, hex_id))
    if isinstance(value, dict):
        return {key: with_generation(item, generation) for key, item in value.items()}
    if isinstance(value, list):
        return [with_generation(item, generation) for item in value]
    return value


def digest(specs: Mapping[str, Any]) -> pulumi.Output[str]:
    """A SHA-256 of specs that may hold Outputs (the token's version), once they are known."""
    return pulumi.Output.from_input(specs).apply(
        lambda resolved: hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()
    )
