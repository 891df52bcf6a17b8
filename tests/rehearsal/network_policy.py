"""NetworkPolicy as a CNI that enforces it (Calico's, Cilium's) does for ingress: which pod addresses are isolated,
and from where, to which ports, each of them may be reached.

A pod is isolated for ingress once a policy of its namespace selects it (`podSelector`, empty for all) with
`Ingress` among its `policyTypes` (implied when they are not given); it then admits a new connection only where a
rule of one of those policies allows it: from any source when the rule has no `from`, else from its peers' pods
(`podSelector` in the policy's namespace, `namespaceSelector` in the namespaces whose labels match, both for pods of
those namespaces that match) and `ipBlock` CIDRs (less their `except`), to any port when the rule has no `ports`,
else to those (TCP; `endPort` makes a range). Replies to admitted connections pass (policies are stateful), and the
node's own traffic (the kubelet's probes) always does, as the documentation requires. A namespace's labels include
`kubernetes.io/metadata.name`, which the API server sets on every namespace.

Not emulated, refused when a policy uses it (UnsupportedError): egress policies, named ports, protocols but TCP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.rehearsal.kubelet import UnsupportedError

Manifest = dict[str, Any]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class PodAddress:
    """A pod the policies may select or name as a peer: its namespace, labels and IP."""

    namespace: str
    labels: Mapping[str, str]
    ip: str


@dataclass(frozen=True)
class Admitted:
    """One way into an isolated pod: from these sources (addresses or CIDRs, each with the CIDRs it excepts; None
    for any source) to these TCP port ranges (None for any port)."""

    sources: tuple[tuple[str, tuple[str, ...]], ...] | None
    ports: tuple[tuple[int, int], ...] | None


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions, all of them) against labels; the empty one matches all."""
    if not set(selector.get("matchLabels", {}).items()) <= set(labels.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if not {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]:
            return False
    return True


def namespace_labels(name: str, labels: Mapping[str, str] | None) -> dict[str, str]:
    """A namespace's labels as selectors see them: its own and the name label the API server sets."""
    return {**(labels or {}), NAMESPACE_NAME_LABEL: name}


def _policy_types(spec: Manifest) -> list[str]:
    """The API server's default: Ingress always, Egress only for a policy with egress rules (`egress: []` has
    none)."""
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") else ["Ingress"])
    if "Egress" in types:
        raise UnsupportedError("not emulated: NetworkPolicy egress")
    return list(types)


def _peer_sources(
    peer: Manifest, namespace: str, pods: Iterable[PodAddress], namespaces: Mapping[str, Mapping[str, str]]
) -> list[tuple[str, tuple[str, ...]]]:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        return [(str(_cidr(block["cidr"])), tuple(str(_cidr(cidr)) for cidr in block.get("except", [])))]
    namespace_selector = peer.get("namespaceSelector")
    pod_selector = peer.get("podSelector", {})
    chosen_namespaces = (
        {name for name, labels in namespaces.items() if matches(namespace_selector, labels)}
        if namespace_selector is not None
        else {namespace}
    )
    return [(pod.ip, ()) for pod in pods if pod.namespace in chosen_namespaces and matches(pod_selector, pod.labels)]


def _cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as the API server takes it: host bits may be set (10.0.0.1/8 is 10.0.0.0/8)."""
    return ipaddress.ip_network(text, strict=False)


def _ports(rule: Manifest) -> tuple[tuple[int, int], ...] | None:
    if not rule.get("ports"):
        return None
    ranges = []
    for port in rule["ports"]:
        if port.get("protocol", "TCP") != "TCP":
            raise UnsupportedError(f"not emulated: NetworkPolicy protocol {port['protocol']}")
        if "port" not in port:
            ranges.append((1, 65535))  # every TCP port, and no other protocol
            continue
        if not isinstance(port["port"], int):
            raise UnsupportedError(f"not emulated: NetworkPolicy named port {port['port']!r}")
        ranges.append((port["port"], port.get("endPort", port["port"])))
    return tuple(ranges)


def check_supported(policy: Manifest) -> None:
    """Refuse, when a policy is applied, what this enforcement would otherwise leave out (UnsupportedError)."""
    spec = policy["spec"]
    _policy_types(spec)
    for rule in spec.get("ingress", []):
        _ports(rule)
        for peer in rule.get("from") or []:
            if "ipBlock" in peer:
                _cidr(peer["ipBlock"]["cidr"])


def admitted(
    policies: Iterable[Manifest], pods: Iterable[PodAddress], namespaces: Mapping[str, Mapping[str, str]]
) -> dict[str, list[Admitted]]:
    """Per isolated pod address, every way in (an empty list: nothing may come in but the node's traffic).
    `namespaces` holds each namespace's labels as selectors see them (namespace_labels)."""
    pods = [pod for pod in pods if pod.ip]
    isolated: dict[str, list[Admitted]] = {}
    for policy in policies:
        spec, namespace = policy["spec"], policy["metadata"]["namespace"]
        if "Ingress" not in _policy_types(spec):
            continue
        ways = []
        for rule in spec.get("ingress", []):
            peers = rule.get("from")
            sources = (
                None
                if not peers
                else tuple(source for peer in peers for source in _peer_sources(peer, namespace, pods, namespaces))
            )
            if sources != ():  # peers that match nothing let nothing in
                ways.append(Admitted(sources, _ports(rule)))
        for pod in pods:
            if pod.namespace == namespace and matches(spec.get("podSelector", {}), pod.labels):
                isolated.setdefault(pod.ip, []).extend(ways)
    return isolated


def _rule(way: Admitted) -> list[str]:
    """A way in as nftables rules of the pod's chain (each ends in accept)."""
    ports = ""
    if way.ports is not None:
        ranges = ", ".join(f"{low}" if low == high else f"{low}-{high}" for low, high in way.ports)
        ports = f"tcp dport {{ {ranges} }} "
    if way.sources is None:
        return [f"    {ports}accept"]
    # Pods' addresses in one set; each CIDR in a rule of its own (a set of overlapping intervals is refused).
    addresses = sorted({address for address, _ in way.sources if "/" not in address})
    rules = [f"    ip saddr {{ {', '.join(addresses)} }} {ports}accept"] if addresses else []
    for cidr, excepted in way.sources:
        if "/" in cidr:
            unless = f" ip saddr != {{ {', '.join(excepted)} }}" if excepted else ""
            rules.append(f"    ip saddr {cidr}{unless} {ports}accept")
    return rules


def policy_rules(isolated: Mapping[str, list[Admitted]]) -> str:
    """The policies as one nftables script for the node (applied atomically): in its forward hook, which every
    packet between pods crosses (pods are routed, not bridged: network.py), a new connection to an isolated pod is
    dropped unless one of its ways in admits it; replies to admitted connections pass."""
    chains, jumps = [], []
    for number, (address, ways) in enumerate(sorted(isolated.items())):
        # A pod reaches itself (through a Service) whatever its policies say, as it does on a cluster.
        own = f"    ip saddr {address} accept"
        chains += [f"  chain pod-{number} {{", own, *(line for way in ways for line in _rule(way)), "    drop", "  }"]
        jumps.append(f"{address} : jump pod-{number}")
    dispatch = [f"    ip daddr vmap {{ {', '.join(jumps)} }}"] if jumps else []
    return "\n".join(
        [
            "table ip network-policies",
            "delete table ip network-policies",
            "table ip network-policies {",
            *chains,
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            "    ct state established,related accept",
            *dispatch,
            "  }",
            "}",
            "",
        ]
    )
