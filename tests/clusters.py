"""Real Redis Clusters for tests: redis-server processes on free loopback ports, joined by
`redis-cli --cluster create`, each node's files in a temporary folder of its own.

Every node is a plain subprocess of the test run (no daemonizing), so `stop()` or the end of
the run ends it; nothing here ever touches port 6379, where a shared server may listen."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.cluster import RedisCluster

from tests.processes import free_port, redis_server_path, wait_until_answering

SLOTS = 16384
# A node's cluster bus listens on its port + 10000 (the Redis Cluster specification), so both
# must be free, and the bus port must still be a port.
BUS_OFFSET = 10000
SHARED_PORT = 6379


def require_redis_cli() -> str:
    """The redis-cli on PATH. Without one the test is skipped, except under CI, where it
    fails: .ci/run installs redis-tools, so a missing redis-cli there is a broken machine."""
    path = shutil.which("redis-cli")
    if path is None:
        reason = "no redis-cli here to create a Redis Cluster (apt-get install redis-tools)"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs redis-cli: {reason}; see .ci/run")
        pytest.skip(reason)
    return path


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port(taken: set[int]) -> int:
    """A free port P whose bus port P + 10000 is free too, neither of them taken already nor
    the shared server's."""
    while True:
        port = free_port()
        bus = port + BUS_OFFSET
        ours = {port, bus}
        if (
            bus <= 65535
            and SHARED_PORT not in ours
            and not ours & taken
            and not {p + BUS_OFFSET for p in ours} & taken
            and _port_is_free(bus)
        ):
            return port


def _info(text: str) -> dict[str, str]:
    """CLUSTER INFO's `field:value` lines as a dict."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, value in pairs}


@dataclass(frozen=True)
class Node:
    """One line of CLUSTER NODES."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[str, ...]  # "0-5460", "5461"; a slot in migration is "[5461->-<id>]"

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def is_failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "noaddr", "handshake"})


def parse_nodes(text: str) -> list[Node]:
    """CLUSTER NODES: `<id> <ip:port@cport[,hostname]> <flags> <master> ...` per line."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0]
        port = int(address.rsplit(":", 1)[1]) if ":" in address else 0
        master = None if fields[3] == "-" else fields[3]
        slots = tuple(f for f in fields[8:] if not f.startswith("["))
        nodes.append(Node(fields[0], port, frozenset(fields[2].split(",")), master, slots))
    return nodes


@dataclass
class Cluster:
    """A Redis Cluster on 127.0.0.1 of `masters_wanted` masters with `replicas` replicas
    each. `start()` (or the `started` constructor, which stops what it started if starting
    fails) brings it to `cluster_state:ok`; `stop()` ends every node and removes its files."""

    masters_wanted: int = 3
    replicas: int = 0
    node_timeout_ms: int = 5000
    start_timeout: float = 30.0
    ports: list[int] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="agg-cluster-")))
    create_output: str = ""
    startup_seconds: float = 0.0
    _processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    _killed: set[int] = field(default_factory=set)

    @classmethod
    def started(cls, masters: int = 3, replicas: int = 0, node_timeout_ms: int = 5000) -> Cluster:
        cluster = cls(masters_wanted=masters, replicas=replicas, node_timeout_ms=node_timeout_ms)
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # --- starting and stopping ---------------------------------------------------------------

    def start(self) -> None:
        began = time.monotonic()
        redis_cli = require_redis_cli()
        for _ in range(self.masters_wanted * (1 + self.replicas)):
            self.ports.append(self._start_node())
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        command = [redis_cli, "--cluster", "create", *addresses]
        command += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        created = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=self.start_timeout,
        )
        self.create_output = created.stdout + created.stderr
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create exited {created.returncode}:\n{self.create_output}"
            )
        remaining = self.start_timeout - (time.monotonic() - began)
        self._wait(remaining, formed=True)
        self.startup_seconds = time.monotonic() - began

    def _start_node(self) -> int:
        """Start one cluster-enabled redis-server; a port taken by someone else between our
        check and its bind only costs another try."""
        binary = redis_server_path()
        for _ in range(5):
            port = _cluster_port(set(self.ports))
            log = self.workdir / f"redis-{port}.log"
            command = [
                binary,
                "--port",
                str(port),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.workdir / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                # A replica's first sync is streamed to it (diskless, the default since 7.0)
                # after waiting 5 s for more replicas to share it: 5 s of start-up for none.
                "--repl-diskless-sync-delay",
                "0",
            ]
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            client = redis.Redis(host="127.0.0.1", port=port)
            try:
                wait_until_answering(client, process, 10, f"cluster node redis-server :{port}")
            except RuntimeError:
                if process.poll() is None:
                    process.kill()
                process.wait(10)
                continue
            finally:
                client.close()
            self._processes[port] = process
            return port
        raise RuntimeError(f"no cluster node would start; last log:\n{log.read_text()}")

    def stop(self) -> None:
        for process in self._processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self._processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        self._processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crash would: no shutdown, no goodbye to the others."""
        process = self._processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self._killed.add(port)

    # --- what the cluster says -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The product's URL form for a cluster: the first node started, to learn the others
        from."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    @property
    def every_node_url(self) -> str:
        """The URL naming every node, so a process started while one is down still finds
        the cluster."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def live_ports(self) -> list[int]:
        return [port for port in self.ports if port not in self._killed]

    def node(self, port: int) -> redis.Redis:
        """A plain (not cluster-aware) client of one node; the caller closes it."""
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)

    def client(self) -> RedisCluster:
        """A cluster-aware client that starts from any live node; the caller closes it."""
        return RedisCluster(host="127.0.0.1", port=self.live_ports[0], socket_timeout=5)

    def nodes(self) -> list[Node]:
        """CLUSTER NODES as a live node sees it."""
        return parse_nodes(self._command(self.live_ports[0], "CLUSTER", "NODES"))

    def masters(self) -> list[int]:
        """The ports of the masters now, by CLUSTER NODES: neither failed nor suspected."""
        return sorted(n.port for n in self.nodes() if n.is_master and not n.is_failing)

    def replica_of(self, port: int) -> int:
        """The port of a replica of the master at `port`."""
        nodes = self.nodes()
        master = next(n for n in nodes if n.port == port)
        for node in nodes:
            if node.master_id == master.id and not node.is_failing:
                return node.port
        raise LookupError(f"the node at port {port} has no replica")

    def key_counts(self) -> dict[int, int]:
        """DBSIZE of every master."""
        return {port: self._number(port, "DBSIZE") for port in self.masters()}

    def used_memory(self) -> dict[int, int]:
        """INFO memory's used_memory of every master, in bytes."""
        return {
            port: int(_info(self._command(port, "INFO", "memory"))["used_memory"])
            for port in self.masters()
        }

    def flush(self) -> None:
        """FLUSHALL on every master (a replica follows its master)."""
        for port in self.masters():
            self._call(port, "FLUSHALL")

    def wait_ok(self, timeout: float = 10.0) -> None:
        """Wait until every live node says `cluster_state:ok` with all 16384 slots served, and
        serves no slot from a node we killed (so a call just after `kill` waits for the
        failover instead of seeing the state from before anyone noticed)."""
        self._wait(timeout, formed=False)

    def wait_synced(self, timeout: float = 10.0) -> None:
        """Wait until every live replica has all its master has written so far (replication
        is asynchronous, so a write acknowledged by a master may not be on its replica yet)."""
        deadline = time.monotonic() + timeout
        targets = {}
        for node in self.nodes():
            if node.is_master and not node.is_failing:
                info = _info(self._command(node.port, "INFO", "replication"))
                targets[node.id] = int(info["master_repl_offset"])
        while True:
            behind = []
            for node in self.nodes():
                if node.master_id in targets and node.port in self.live_ports:
                    info = _info(self._command(node.port, "INFO", "replication"))
                    offset = int(info.get("slave_repl_offset", "-1"))
                    if info.get("master_link_status") != "up" or offset < targets[node.master_id]:
                        behind.append(f"{node.port} at {offset}")
            if not behind:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replicas still behind after {timeout} s: {behind}")
            time.sleep(0.05)

    def _wait(self, timeout: float, formed: bool) -> None:
        """Poll CLUSTER INFO and CLUSTER NODES on every live node until the cluster is whole;
        `formed`: just created, so also wait for every node to know every other, and every
        replica to be linked to its master."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            problems = self._problems(formed)
            if not problems:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Redis Cluster on ports {self.ports} not ok after {timeout:.1f} s: "
                    + "; ".join(problems)
                    + f"\nredis-cli --cluster create said:\n{self.create_output}"
                )
            time.sleep(0.05)

    def _problems(self, formed: bool) -> list[str]:
        problems = []
        live = self.live_ports
        for port in live:
            try:
                info = _info(self._command(port, "CLUSTER", "INFO"))
                nodes = parse_nodes(self._command(port, "CLUSTER", "NODES"))
                replication = _info(self._command(port, "INFO", "replication"))
            except redis.RedisError as err:
                problems.append(f":{port} {err}")
                continue
            if info.get("cluster_state") != "ok":
                problems.append(f":{port} cluster_state:{info.get('cluster_state')}")
            for name in ("cluster_slots_assigned", "cluster_slots_ok"):
                if info.get(name) != str(SLOTS):
                    problems.append(f":{port} {name}:{info.get(name)}")
            served = {node.port for node in nodes if node.slots}
            if served - set(live):
                problems.append(f":{port} has slots served by dead nodes {served - set(live)}")
            if formed:
                if info.get("cluster_known_nodes") != str(len(self.ports)):
                    problems.append(f":{port} knows {info.get('cluster_known_nodes')} nodes")
                if replication.get("role") == "slave" and (
                    replication.get("master_link_status") != "up"
                ):
                    problems.append(f":{port} replica link {replication.get('master_link_status')}")
        if formed and not problems:
            masters = sum(1 for node in self.nodes() if node.is_master)
            if masters != self.masters_wanted:
                problems.append(f"{masters} masters, not {self.masters_wanted}")
        return problems

    def _call(self, port: int, *args: str) -> object:
        """One command to one node, its reply as the server sent it in RESP2 (bytes, int,
        lists): no redis-py response callbacks, which parse CLUSTER and INFO replies
        differently across its versions."""
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, protocol=2)
        client.response_callbacks.clear()
        execute = cast(Callable[..., object], client.execute_command)  # untyped in redis-py
        try:
            return execute(*args)
        finally:
            client.close()

    def _number(self, port: int, *args: str) -> int:
        reply = self._call(port, *args)
        if isinstance(reply, int):
            return reply
        raise TypeError(f"{' '.join(args)} answered {reply!r}, not a number")

    def _command(self, port: int, *args: str) -> str:
        """A command whose reply is text (CLUSTER NODES, CLUSTER INFO, INFO), as text."""
        reply = self._call(port, *args)
        if isinstance(reply, bytes):
            return reply.decode()
        raise TypeError(f"{' '.join(args)} answered {reply!r}, not text")
