"""Link faults on loopback with iptables owner rules.

Every node process of a chaos cluster runs with its own group id (uid stays 0, so it
can read the project's interpreter), and each node listens on its own port. Cutting
the link A -> B drops packets that processes of A's group send to B's port: A can no
longer reach B's server; B's requests to A are a separate link. Rules live in a chain
of their own jumped to from OUTPUT, so `close()` removes every rule this harness added
and nothing else. Needs root and iptables; `available()` says whether both are here.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def available() -> tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "needs root for iptables"
    if shutil.which("iptables") is None:
        return False, "iptables is not installed (apt-get install -y iptables)"
    probe = subprocess.run(["iptables", "-L", "OUTPUT", "-n"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        return False, f"iptables does not work here: {probe.stderr.strip()}"
    return True, ""


class LinkFaults:
    def __init__(self, node_gids: dict[int, int], node_ports: dict[int, int]) -> None:
        self.node_gids = node_gids
        self.node_ports = node_ports
        self.chain = f"DMQ-CHAOS-{os.getpid()}"
        self.cut_links: set[tuple[int, int]] = set()
        self._ipt("-N", self.chain)
        self._ipt("-I", "OUTPUT", "-o", "lo", "-j", self.chain)

    @staticmethod
    def _ipt(*args: str, check: bool = True) -> None:
        r = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True,
                           check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {r.stderr.strip()}")

    def _rule(self, src: int, dst: int) -> list[str]:
        return ["-p", "tcp", "--dport", str(self.node_ports[dst]), "-m", "owner",
                "--gid-owner", str(self.node_gids[src]), "-j", "DROP"]

    def cut(self, src: int, dst: int, both: bool = True) -> None:
        """Drop what `src` sends to `dst`'s port (and the reverse when `both`)."""
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            if (a, b) not in self.cut_links:
                self._ipt("-A", self.chain, *self._rule(a, b))
                self.cut_links.add((a, b))

    def heal(self, src: int, dst: int, both: bool = True) -> None:
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            if (a, b) in self.cut_links:
                self._ipt("-D", self.chain, *self._rule(a, b))
                self.cut_links.discard((a, b))

    def isolate(self, node: int, others: list[int] | None = None) -> None:
        for other in others if others is not None else self.node_ports:
            if other != node:
                self.cut(node, other)

    def heal_all(self) -> None:
        self._ipt("-F", self.chain)
        self.cut_links.clear()

    def close(self) -> None:
        self._ipt("-D", "OUTPUT", "-o", "lo", "-j", self.chain, check=False)
        self._ipt("-F", self.chain, check=False)
        self._ipt("-X", self.chain, check=False)
