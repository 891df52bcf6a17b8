"""The rehearsal's network: an isolated node namespace with a bridge, one network namespace per pod, a cluster
DNS that answers Service names, and kube-proxy: Services' ClusterIPs, forwarded to their endpoints.

The node namespace has no link to the outside world, so nothing a pod sends can leave it; the harness thread
that creates it moves into it, so probes and checks reach pods the way a kubelet on the node would.

Each pod has a /32 address whose one neighbour is the node, as Calico wires pods: the node routes every packet
between pods, so its nftables rules see them all. They enforce the NetworkPolicies (network_policy.py) and model
a lost node's pods, whose addresses' traffic is dropped silently (on the bridge too).

A Service's name resolves to its ClusterIP, which stays while the pods behind it come and go: a client's connection
is forwarded (nftables DNAT in the node namespace) to one of its endpoints at the time, or refused at once while it
has none, as kube-proxy's rules do. Replies return through the node (the forwarded traffic is masqueraded, as
kube-proxy's `--masquerade-all` does), so the client sees them come from the ClusterIP. The `kubernetes` Service's
endpoint is the node itself, where the API server listens: what the rules forward there is taken in, not refused.
"""

from __future__ import annotations

import collections
import ctypes
import ipaddress
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

from tests.rehearsal.network_policy import Admitted, policy_rules

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class NetworkError(RuntimeError):
    """Namespaces, links or addresses could not be set up: the rehearsal cannot run (never a skip)."""


def ip(*args: str) -> None:
    completed = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {completed.stderr.strip()}")


def _run(argv: list[str], stdin: str | None = None) -> None:
    completed = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise NetworkError(f"{' '.join(argv)}: {completed.stderr.strip()}")


def proxy_rules(services: Mapping[str, Mapping[int, list[str]]], service_subnet: str) -> str:
    """kube-proxy's rules as one nftables script (applied atomically): per ClusterIP and TCP port, a new
    connection goes to one of its endpoints at random; without endpoints, and to any port a Service does not
    have, it is refused at once (a TCP reset), as kube-proxy's REJECT does."""
    forwards = []
    for cluster_ip, ports in sorted(services.items()):
        for port, endpoints in sorted(ports.items()):
            if endpoints:
                choices = ", ".join(f"{index} : {address}" for index, address in enumerate(endpoints))
                target = f"numgen random mod {len(endpoints)} map {{ {choices} }}"
                forwards.append(f"    ip daddr {cluster_ip} tcp dport {port} dnat to {target}")
    return "\n".join(
        [
            "table ip kube-proxy",
            "delete table ip kube-proxy",
            "table ip kube-proxy {",
            "  chain services {",
            *forwards,
            "  }",
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }",
            "  chain output { type nat hook output priority -100; policy accept; jump services; }",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            "    ct status dnat masquerade",
            "  }",
            "  chain refuse {",
            "    type filter hook input priority filter; policy accept;",
            # Replies to the node's own connections (their source is a ClusterIP, by the local route), and what
            # the node itself sends there, are not refused.
            "    ct status dnat accept",
            "    fib saddr type local accept",
            f"    ip daddr {service_subnet} meta l4proto tcp reject with tcp reset",
            f"    ip daddr {service_subnet} reject",
            "  }",
            "}",
            "",
        ]
    )


def dropped_rules(addresses: Collection[str]) -> str:
    """The rules that make pod addresses unreachable as a lost node's are: every packet to or from them is dropped
    without an answer (no reset, no ICMP), whether it crosses the bridge between pods or the node routes it (a
    Service's connection forwarded there, the node's own probes)."""
    chosen = ", ".join(sorted(addresses))
    both = [f"ip saddr {{ {chosen} }} drop;", f"ip daddr {{ {chosen} }} drop;"] if addresses else []
    to = [f"ip daddr {{ {chosen} }} drop;"] if addresses else []
    from_ = [f"ip saddr {{ {chosen} }} drop;"] if addresses else []

    def chain(name: str, hook: str, rules: list[str]) -> str:
        return f"  chain {name} {{ type filter hook {hook} priority filter; policy accept; {' '.join(rules)} }}"

    return "\n".join(
        [
            "table bridge lost-nodes",
            "delete table bridge lost-nodes",
            "table bridge lost-nodes {",
            chain("forward", "forward", both),
            "}",
            "table ip lost-nodes",
            "delete table ip lost-nodes",
            "table ip lost-nodes {",
            chain("forward", "forward", both),
            chain("output", "output", to),
            chain("input", "input", from_),
            "}",
            "",
        ]
    )


def _pids(namespace: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return listed.stdout.split()


def enter_namespace(path: str) -> None:
    """Move the calling thread into a network namespace (threads it starts later follow it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise NetworkError(f"setns({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


class PodNetwork:
    """Allocates pod namespaces on one bridge, like a CNI plugin on a single node."""

    SERVICE_SUBNET = ipaddress.ip_network("10.96.0.0/24")

    def __init__(self, prefix: str, subnet: str = "10.244.0.0/24") -> None:
        self.prefix = prefix
        self.subnet = ipaddress.ip_network(subnet)
        hosts = self.subnet.hosts()
        self.gateway = str(next(hosts))
        # Handed out in turn and given back at the end of the line, as host-local IPAM goes round its range: a new
        # pod does not get the address a pod just left.
        self._free_addresses = collections.deque(str(address) for address in hosts)
        self._interface_numbers = itertools.count()
        self._lock = threading.Lock()
        self.node = f"{prefix}-node"
        self._pods: dict[str, tuple[str, str]] = {}  # pod: (namespace, address)
        self._original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        ip("netns", "add", self.node)
        try:
            ip("-n", self.node, "link", "set", "lo", "up")
            ip("-n", self.node, "link", "add", "br0", "type", "bridge")
            ip("-n", self.node, "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", "br0")
            ip("-n", self.node, "link", "set", "br0", "up")
            # The node routes what pods send to ClusterIPs (back out through the bridge), and takes in what no
            # Service rule forwarded, to refuse it.
            for setting, value in (("ipv4/ip_forward", 1), ("ipv4/conf/all/send_redirects", 0),
                                   ("ipv4/conf/br0/send_redirects", 0)):  # fmt: skip
                _run(["ip", "netns", "exec", self.node, "sh", "-c", f"echo {value} > /proc/sys/net/{setting}"])
            ip("-n", self.node, "route", "add", "local", str(self.SERVICE_SUBNET), "dev", "lo")
            enter_namespace(f"/run/netns/{self.node}")
        except BaseException:
            ip("netns", "del", self.node)
            raise

    def proxy(self, services: Mapping[str, Mapping[int, list[str]]]) -> None:
        """Make the node forward each ClusterIP's ports to these endpoints (see proxy_rules)."""
        _run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], proxy_rules(services, str(self.SERVICE_SUBNET)))

    def drop(self, addresses: Collection[str]) -> None:
        """Make these pod addresses unreachable, and every other one reachable again (see dropped_rules)."""
        _run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], dropped_rules(addresses))

    def police(self, isolated: Mapping[str, list[Admitted]]) -> None:
        """Admit new connections to isolated pods only as their NetworkPolicies do (network_policy.py)."""
        _run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], policy_rules(isolated))

    def add_pod(self, pod: str) -> tuple[str, str]:
        """A namespace for the pod, wired to the bridge; returns its name and the pod's IP."""
        with self._lock:
            if not self._free_addresses:
                raise NetworkError(f"no free address in {self.subnet}")
            address, number = self._free_addresses.popleft(), next(self._interface_numbers)
        # The interface number keeps names unique where the pod's is cut short.
        namespace, host_side = f"{self.prefix}-{number}-{pod}"[:40], f"vp{number}"
        ip("netns", "add", namespace)
        ip("-n", self.node, "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("-n", self.node, "link", "set", host_side, "master", "br0", "up")
        # Hairpin, as the kubelet sets it (--hairpin-mode): a pod's connection to its own Service's ClusterIP,
        # forwarded back to itself, leaves the bridge through the port it came in by.
        ip("-n", self.node, "link", "set", host_side, "type", "bridge_slave", "hairpin", "on")
        ip("-n", namespace, "link", "set", "lo", "up")
        # A /32 with the node as the only neighbour, as Calico wires pods: everything a pod sends to another pod
        # is routed through the node, where the NetworkPolicies' rules see it (the bridge has no conntrack here).
        # The default route (into the isolated node namespace) also lets Ray's own address detection find eth0.
        ip("-n", namespace, "addr", "add", f"{address}/32", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "route", "add", self.gateway, "dev", "eth0", "scope", "link")
        ip("-n", namespace, "route", "add", "default", "via", self.gateway)
        with self._lock:
            self._pods[pod] = namespace, address
        return namespace, address

    def remove_pod(self, pod: str, timeout: float = 30) -> None:
        """Once the pod's last process has exited (so its connections were closed on the wire), as CNI teardown."""
        with self._lock:
            namespace, address = self._pods.pop(pod, ("", ""))
        if not namespace:
            return
        deadline = time.monotonic() + timeout
        while _pids(namespace) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in _pids(namespace):
            os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", namespace)  # takes the veth pair with it
        with self._lock:
            self._free_addresses.append(address)

    def close(self) -> None:
        for pod in list(self._pods):
            self.remove_pod(pod)
        try:
            if _libc.setns(self._original, CLONE_NEWNET) != 0:
                raise NetworkError(f"could not return to the original namespace: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(self._original)
            ip("netns", "del", self.node)


class _ServiceResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, lookup: Callable[[str], list[str]]) -> None:
        self.lookup = lookup

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        addresses = self.lookup(name)
        if request.q.qtype == QTYPE.A:
            for address in addresses:
                reply.add_answer(RR(name, QTYPE.A, rdata=A(address), ttl=1))
        if not addresses:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class ClusterDNS:
    """Cluster DNS on the bridge: Service names resolve to their ClusterIPs, anything else is NXDOMAIN at once."""

    def __init__(self, address: str, lookup: Callable[[str], list[str]]) -> None:
        self._server = DNSServer(_ServiceResolver(lookup), address=address, port=53, logger=_QuietLogger())
        self._server.start_thread()

    def close(self) -> None:
        self._server.stop()


class _QuietLogger:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None
