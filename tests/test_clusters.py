"""The Redis Cluster fixtures give real, working clusters: keys spread over the masters, and a
killed master's replica takes over with the keys written before."""

from __future__ import annotations

import time

import pytest
from redis.cluster import RedisCluster

from tests.clusters import SHARED_PORT, Cluster, require_redis_cli

KEYS = 3000


def test_a_whole_cluster_on_loopback_ports_of_its_own(cluster: Cluster) -> None:
    assert cluster.url == f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
    assert len(set(cluster.ports)) == 3
    assert SHARED_PORT not in cluster.ports
    assert cluster.masters() == sorted(cluster.ports)
    assert cluster.startup_seconds < 10, cluster.startup_seconds
    client = RedisCluster.from_url(f"redis://127.0.0.1:{cluster.ports[0]}")
    try:
        assert client.cluster_info()["cluster_state"] == "ok"
        client.set("whole", "yes")
        assert client.get("whole") == b"yes"
    finally:
        client.close()


def test_keys_spread_over_every_master(cluster: Cluster) -> None:
    client = cluster.client()
    try:
        client.mset_nonatomic({f"spread:{i}": str(i) for i in range(KEYS)})
        values = client.mget_nonatomic([f"spread:{i}" for i in range(KEYS)])
        assert values == [str(i).encode() for i in range(KEYS)]
    finally:
        client.close()
    counts = cluster.key_counts()
    assert sorted(counts) == cluster.masters()
    assert sum(counts.values()) == KEYS
    for port, count in counts.items():
        assert 0.2 * KEYS <= count <= 0.5 * KEYS, (port, counts)
    memory = cluster.used_memory()
    assert sorted(memory) == cluster.masters()
    assert all(used > 0 for used in memory.values())


def test_flush_empties_every_master(cluster: Cluster) -> None:
    client = cluster.client()
    try:
        for i in range(100):
            client.set(f"flush:{i}", "x")
    finally:
        client.close()
    assert sum(cluster.key_counts().values()) == 100
    cluster.flush()
    assert cluster.key_counts() == dict.fromkeys(cluster.masters(), 0)


def test_a_killed_masters_replica_takes_over_with_its_keys(failover_cluster: Cluster) -> None:
    cluster = failover_cluster
    assert len(cluster.ports) == 6
    masters = cluster.masters()
    assert len(masters) == 3
    replicas = {master: cluster.replica_of(master) for master in masters}
    assert sorted([*masters, *replicas.values()]) == sorted(cluster.ports)

    client = cluster.client()
    try:
        client.mset_nonatomic({f"failover:{i}": str(i) for i in range(KEYS)})
    finally:
        client.close()
    cluster.wait_synced(10)
    victim = masters[0]
    heir = replicas[victim]
    held = cluster.key_counts()[victim]
    assert held > 0

    cluster.kill(victim)
    killed_at = time.monotonic()
    deadline = killed_at + 10
    while heir not in cluster.masters():
        assert time.monotonic() < deadline, f"{heir} not promoted: {cluster.nodes()}"
        time.sleep(0.1)
    cluster.wait_ok(max(deadline - time.monotonic(), 0.0))
    took = time.monotonic() - killed_at
    assert took < 10, took

    assert cluster.masters() == sorted(set(masters) - {victim} | {heir})
    assert cluster.key_counts()[heir] == held
    client = cluster.client()
    try:
        values = client.mget_nonatomic([f"failover:{i}" for i in range(KEYS)])
        assert values == [str(i).encode() for i in range(KEYS)]
        client.set("failover:after", "written")
        assert client.get("failover:after") == b"written"
    finally:
        client.close()


def test_no_redis_cli_skips_but_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-cli"):
        require_redis_cli()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs redis-cli"):
        require_redis_cli()
