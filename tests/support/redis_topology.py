"""Real Redis topologies on loopback: a 3-primary Cluster, and a primary + replica + Sentinel.

Each node is a ``RedisProcess`` (own port, own directory, own log). Start-up waits by polling
the processes' own state (``CLUSTER INFO``, ``INFO replication``, ``SENTINEL``), never by
sleeping a fixed time.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.redis_proc import RedisProcess, free_port

CLUSTER_BUS_OFFSET = 10000


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free and below 65536 too."""
    for _ in range(200):
        port = free_port()
        bus = port + CLUSTER_BUS_OFFSET
        if port in taken or bus in taken or bus >= 65536:
            continue
        if _port_is_free(bus):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def redis_cli(*args: str, timeout: float = 30.0) -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise RuntimeError("redis-cli is not on PATH")
    done = subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"redis-cli {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def wait_for(what: str, condition: Callable[[], bool], bound_seconds: float = 20.0) -> None:
    deadline = time.monotonic() + bound_seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except RuntimeError:
            pass
        time.sleep(0.05)  # polling another process's state, not synchronising test logic
    raise RuntimeError(f"timed out waiting for {what}")


def info_field(port: int, section: str, name: str) -> str | None:
    for line in redis_cli("-p", str(port), "INFO", section).splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return value
    return None


@dataclass
class ClusterProcess:
    workdir: Path
    size: int = 3
    aof: bool = False
    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The URL of one node: enough for the gateway to find the whole cluster."""
        return self.nodes[0].url

    def start(self) -> None:
        taken: set[int] = set()
        for i in range(self.size):
            port = free_cluster_port(taken)
            taken |= {port, port + CLUSTER_BUS_OFFSET}
            workdir = self.workdir / f"node{i}"
            workdir.mkdir(parents=True, exist_ok=True)
            node = RedisProcess(
                port=port,
                workdir=workdir,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                    *(["--appendonly", "yes", "--appendfsync", "always"] if self.aof else []),
                ],
            )
            node.start()
            self.nodes.append(node)
        redis_cli(
            "--cluster",
            "create",
            *(f"127.0.0.1:{n.port}" for n in self.nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        )
        self.wait_until_ok()

    def wait_until_ok(self) -> None:
        for node in self.nodes:
            wait_for(
                f"cluster_state:ok on {node.port}",
                lambda node=node: (
                    info_cluster(node.port).get("cluster_state") == "ok"
                    and info_cluster(node.port).get("cluster_known_nodes") == str(self.size)
                ),
            )

    def slot_ranges(self) -> dict[int, list[tuple[int, int]]]:
        """Node port -> the slot ranges it serves, as the nodes themselves say."""
        ranges: dict[int, list[tuple[int, int]]] = {}
        for node in self.nodes:
            for line in redis_cli("-p", str(node.port), "CLUSTER", "NODES").splitlines():
                parts = line.split()
                if "myself" not in parts[2]:
                    continue
                spans = ranges.setdefault(node.port, [])
                for span in parts[8:]:
                    low, _, high = span.partition("-")
                    if low.isdigit():
                        spans.append((int(low), int(high or low)))
        return ranges

    def port_of_slot(self, slot: int) -> int:
        for port, spans in self.slot_ranges().items():
            if any(low <= slot <= high for low, high in spans):
                return port
        raise RuntimeError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def info_cluster(port: int) -> dict[str, str]:
    out = {}
    for line in redis_cli("-p", str(port), "CLUSTER", "INFO").splitlines():
        key, _, value = line.strip().partition(":")
        out[key] = value
    return out


@dataclass
class SentinelSetup:
    """A primary, one replica and one Sentinel watching them as ``service``."""

    workdir: Path
    service: str = "mymaster"
    primary: RedisProcess | None = None
    replica: RedisProcess | None = None
    sentinel: RedisProcess | None = None

    @property
    def url(self) -> str:
        assert self.sentinel is not None
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{self.service}"

    def start(self) -> None:
        for name in ("primary", "replica", "sentinel"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        self.primary = RedisProcess(port=free_port(), workdir=self.workdir / "primary")
        self.primary.start()
        self.replica = RedisProcess(
            port=free_port(),
            workdir=self.workdir / "replica",
            extra_args=["--replicaof", "127.0.0.1", str(self.primary.port)],
        )
        self.replica.start()
        wait_for(
            "the replica to sync",
            lambda: (
                info_field(self.replica.port, "replication", "master_link_status") == "up"
                if self.replica
                else False
            ),
        )
        conf = self.workdir / "sentinel" / "sentinel.conf"
        conf.write_text(
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 5000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        self.sentinel = RedisProcess(
            port=free_port(),
            workdir=self.workdir / "sentinel",
            config_file=conf,
            extra_args=["--sentinel"],
        )
        self.sentinel.start()
        wait_for("the sentinel to see the replica", lambda: self._sentinel_sees_replica())

    def _sentinel_sees_replica(self) -> bool:
        assert self.sentinel is not None and self.replica is not None
        out = redis_cli("-p", str(self.sentinel.port), "SENTINEL", "replicas", self.service)
        return str(self.replica.port) in out

    def current_primary_port(self) -> int:
        assert self.sentinel is not None
        out = redis_cli(
            "-p", str(self.sentinel.port), "SENTINEL", "get-master-addr-by-name", self.service
        ).split()
        return int(out[1])

    def failed_over_from(self, old_port: int) -> bool:
        """The Sentinel names another primary and no longer flags it down or failing over."""
        assert self.sentinel is not None
        out = redis_cli("-p", str(self.sentinel.port), "SENTINEL", "master", self.service)
        fields = out.split("\n")
        state = dict(zip(fields[::2], fields[1::2], strict=False))
        return state.get("port") != str(old_port) and state.get("flags") == "master"

    def stop(self) -> None:
        for proc in (self.sentinel, self.replica, self.primary):
            if proc is not None:
                proc.stop()
