"""docker-compose.yml, checked without Docker (none here): the file is parsed and held to what
it promises (restart policies, workers that wait for a healthy Redis, feeds.yaml reached
through a folder mount, the README's commands word for word, an image built from files that
exist), and its commented Redis Cluster variant, written out the way README.md says, is held
to the same. Then what can run without Docker runs: each service's command with the
service's environment (addresses moved to this machine's test servers), its health checks
against a live and a dead Redis, and the cluster variant's one-shot `cluster create` twice."""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import yaml
from gunicorn.config import Config as GunicornConfig

from aggregator import config as config_module
from tests.clusters import SLOTS, Cluster, require_redis_cli
from tests.processes import free_port
from tests.readme_support import Item, Site, hours_ago, rss, stop, titles, wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
BEGIN = "# >>> cluster variant"
ENV_NAMES = {config_module.ENV_CONFIG, config_module.ENV_REDIS_URL}
REDIS_HEALTHCHECK = ["CMD", "redis-cli", "ping"]


# --- reading the files ---------------------------------------------------------------------


def load(text: str) -> dict[str, Any]:
    document = yaml.safe_load(text)
    assert isinstance(document, dict), "a compose file is a mapping"
    return document


def compose() -> dict[str, Any]:
    return load(COMPOSE.read_text(encoding="utf-8"))


def readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def readme_command(prefix: str) -> list[str]:
    """The first command in backticks beginning with `prefix` in README.md's Commands table,
    without its optional parts (`[--metrics-port P]`)."""
    found = re.findall(r"`(" + re.escape(prefix) + r"[^`]*)`", readme_section("Commands"))
    assert found, f"README.md's Commands table names no `{prefix}…`"
    return shlex.split(re.sub(r"\s*\[[^\]]*\]", "", found[0]))


def fleet_lines(mentioning: str) -> list[str]:
    """The shell lines in the ```sh blocks of README.md's "Deploying a fleet" section that
    mention `mentioning`, continuation lines joined."""
    section = readme_section("Deploying a fleet")
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = block.replace("\\\n", " ")
        lines += [line.strip() for line in joined.splitlines() if mentioning in line]
    assert lines, f'README.md\'s "Deploying a fleet" has no command with {mentioning!r}'
    return lines


def cluster_variant(workdir: Path) -> dict[str, Any]:
    """The commented cluster variant, written out by README.md's own command from a copy of
    the compose file."""
    (command,) = [line for line in fleet_lines("docker-compose.cluster.yml") if "sed" in line]
    shutil.copy(COMPOSE, workdir / COMPOSE.name)
    done = subprocess.run(["sh", "-c", command], cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = (workdir / "docker-compose.cluster.yml").read_text(encoding="utf-8")
    assert not [line for line in text.splitlines() if line.startswith("#")], "left commented"
    return load(text)


def normalized(shell: str) -> str:
    return " ".join(shell.replace("\\\n", " ").replace("#", " ").split())


def in_container(words: Sequence[str]) -> list[str]:
    """`docker compose exec|run [OPTIONS] SERVICE COMMAND…` → the command as the service's
    entrypoint runs it (the cli service's entrypoint is `aggregator`)."""
    assert list(words[:2]) == ["docker", "compose"] and words[2] in ("exec", "run"), words
    at = next(i for i, word in enumerate(words[3:], 3) if not word.startswith("-"))
    entrypoint = compose()["services"][words[at]].get("entrypoint", [])
    return [*entrypoint, *words[at + 1 :]]


def words_of(line: str) -> list[str]:
    """A shell line's words, up to any redirection."""
    return shlex.split(line.split("<")[0])


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found.append(Mount(source, target, mode == ["ro"]))
        else:
            found.append(Mount(volume["source"], volume["target"], bool(volume.get("read_only"))))
    return found


def is_bind(mount: Mount) -> bool:
    return mount.source.startswith((".", "/", "~"))


def one_shots(services: Mapping[str, Any]) -> set[str]:
    """Services that run to their end and stay ended: tools behind a profile, and those that
    others wait for with service_completed_successfully."""
    waited = {
        name
        for service in services.values()
        for name, how in depends_on(service).items()
        if how.get("condition") == "service_completed_successfully"
    }
    return waited | {name for name, service in services.items() if service.get("profiles")}


def depends_on(service: Mapping[str, Any]) -> dict[str, Any]:
    """`depends_on` in its long form; the short form (a list) means service_started."""
    named = service.get("depends_on") or {}
    if isinstance(named, list):
        return {name: {"condition": "service_started"} for name in named}
    return dict(named)


def redis_nodes(services: Mapping[str, Any]) -> list[str]:
    return [n for n, s in services.items() if s.get("command", [""])[0] == "redis-server"]


def aggregator_services(services: Mapping[str, Any]) -> list[str]:
    return [name for name, service in services.items() if service.get("build")]


# --- one set of checks for both variants ---------------------------------------------------


def check_fleet(document: Mapping[str, Any], *, cluster: bool) -> None:
    services: dict[str, Any] = document["services"]
    declared_volumes = document.get("volumes") or {}
    nodes = redis_nodes(services)
    assert len(nodes) == (3 if cluster else 1), nodes
    ours = aggregator_services(services)
    assert {"worker", "web", "cli"} <= set(ours), ours
    shots = one_shots(services)
    assert shots == ({"cli", "cluster-create"} if cluster else {"cli"}), shots

    # Every long-running service comes back after a crash or a reboot of the host; a
    # one-shot one must not (restarted, a finished `cluster create` would run for ever).
    for name, service in services.items():
        wanted = "no" if name in shots else "unless-stopped"
        assert service.get("restart") == wanted, (name, service.get("restart"))

    for name in nodes:
        node = services[name]
        assert node["healthcheck"]["test"] == REDIS_HEALTHCHECK, name
        command = node["command"]
        assert command[command.index("--appendonly") + 1] == "yes", name
        if cluster:
            assert command[command.index("--cluster-enabled") + 1] == "yes", name
        (data,) = [m for m in mounts(node) if m.target == "/data"]
        assert not is_bind(data) and data.source in declared_volumes, name

    if cluster:
        create = services["cluster-create"]
        assert depends_on(create) == {n: {"condition": "service_healthy"} for n in nodes}
        script = " ".join(create["command"])
        assert "redis-cli --cluster create" in script and "--cluster-yes" in script, script
        addresses = re.findall(r"create ((?:\S+:\d+ )+)", script)[0].split()
        fixed = {services[n]["networks"]["fleet"]["ipv4_address"] + ":6379" for n in nodes}
        assert set(addresses) == fixed, (addresses, fixed)
        waits_for = {"cluster-create": {"condition": "service_completed_successfully"}}
    else:
        waits_for = {n: {"condition": "service_healthy"} for n in nodes}
    for name in ours:
        assert depends_on(services[name]) == waits_for, name

    worker, web = services["worker"], services["web"]
    assert worker["command"] == readme_command("aggregator worker")
    assert worker["deploy"]["replicas"] >= 2
    # The `aggregator web` row's production command, word for word.
    assert web["command"] == readme_command("gunicorn ")
    (bind,) = gunicorn_args(web["environment"]).bind
    port = bind.rsplit(":", 1)[1]
    assert bind.startswith("0.0.0.0:"), "reachable from outside its container"
    assert [published.rsplit(":", 1)[1] for published in web["ports"]] == [port]
    health = web["healthcheck"]["test"]
    assert health[:2] == ["CMD", "python"]
    assert f"http://127.0.0.1:{port}/readyz" in health[-1]

    for name in ours:
        environment = services[name]["environment"]
        named = {key for key in environment if key.startswith("AGGREGATOR_")}
        assert named == ENV_NAMES, (name, named)
        check_redis_url(environment[config_module.ENV_REDIS_URL], nodes, cluster=cluster)
        check_config_mount(services[name], writable=name == "cli")

    for name, service in services.items():
        for mount in mounts(service):
            assert is_bind(mount) or mount.source in declared_volumes, (name, mount)
        assert set(service.get("networks") or []) <= set(document.get("networks") or {}), name


def gunicorn_args(environment: Mapping[str, str]) -> Any:
    """GUNICORN_CMD_ARGS read by gunicorn's own parser: a misspelt option fails here."""
    try:
        return GunicornConfig().parser().parse_args(shlex.split(environment["GUNICORN_CMD_ARGS"]))
    except SystemExit as err:  # argparse's way of refusing
        raise AssertionError(f"gunicorn refuses GUNICORN_CMD_ARGS (exit {err.code})") from err


def check_redis_url(url: str, nodes: Sequence[str], *, cluster: bool) -> None:
    assert url.startswith("redis+cluster://" if cluster else "redis://"), url
    assert urlsplit(url).hostname in nodes and urlsplit(url).port == 6379, url
    # The configuration takes it, as it takes it from the environment.
    settings = config_module.parse("sources: []\n", ROOT / "feeds.yaml", url).settings
    assert settings.redis_url == url


def check_config_mount(service: Mapping[str, Any], *, writable: bool) -> None:
    path = PurePosixPath(service["environment"][config_module.ENV_CONFIG])
    binds = [m for m in mounts(service) if is_bind(m)]
    # Never the file itself: a single-file bind mount misses an edit saved by rename.
    assert not [m for m in binds if PurePosixPath(m.target) == path], binds
    (folder,) = [m for m in binds if PurePosixPath(m.target) == path.parent]
    assert folder.read_only is not writable, folder
    on_host = (COMPOSE.parent / folder.source).resolve()
    assert on_host.is_dir() and (on_host / path.name).is_file(), on_host


# --- the structure -------------------------------------------------------------------------


def test_compose_file_keeps_its_promises() -> None:
    """One Redis with a health check and an append-only file; two workers and gunicorn that
    wait for it to be healthy; every long-running service restarted; the README's commands;
    feeds.yaml through the checkout's folder."""
    check_fleet(compose(), cluster=False)


def test_cluster_variant_written_out_as_the_readme_says_keeps_them_too(tmp_path: Path) -> None:
    """The commented Redis Cluster variant, written out by README.md's command: three
    cluster-enabled nodes, a one-shot `redis-cli --cluster create` that waits for them and
    that the fleet waits for, and the same fleet on `redis+cluster://`."""
    check_fleet(cluster_variant(tmp_path), cluster=True)


def test_both_variants_are_compose_files_by_the_compose_specification(tmp_path: Path) -> None:
    """Both files validate against the Compose Specification's JSON schema (the copy that
    check-jsonschema vendors): no misspelt or misplaced key."""
    cluster_variant(tmp_path)
    for path in (COMPOSE, tmp_path / "docker-compose.cluster.yml"):
        command = [sys.executable, "-m", "check_jsonschema"]
        command += ["--builtin-schema", "vendor.compose-spec", str(path)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_gives_the_readmes_commands() -> None:
    """The commands in the compose file's header are those README.md gives, and what they
    run in a container is a command of README.md's Commands table."""
    text = COMPOSE.read_text(encoding="utf-8")
    header = normalized(text.split(f"\n{BEGIN}\n")[0])
    for mentioning in ("docker compose", "docker-compose.cluster.yml"):
        for line in fleet_lines(mentioning):
            assert normalized(line) in header, line
    table = readme_section("Commands")
    for line in fleet_lines("docker compose"):
        words = words_of(line)
        if words[2] in ("exec", "run"):
            command = [w for w in in_container(words) if re.fullmatch(r"[a-z]+", w)]
            assert f"`{' '.join(command)}" in table, line


def test_image_builds_from_files_that_exist() -> None:
    """Every service built here uses the Dockerfile beside the compose file, whose COPY
    sources exist and are not left out of the build context by .dockerignore."""
    services = compose()["services"]
    assert {services[n]["build"] for n in aggregator_services(services)} == {"."}
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile, re.M)
    assert copies
    for copy in copies:
        *sources, _target = shlex.split(copy)
        for source in sources:
            assert (ROOT / source).exists(), source
            assert not [p for p in ignored if fnmatch.fnmatch(source, p.strip("/"))], source
    env = dict(re.findall(r"^ENV\s+(\w+)=(\S+)$", dockerfile, re.M))
    assert set(env) <= ENV_NAMES, env
    assert env.get(config_module.ENV_CONFIG) == "/config/feeds.yaml"


def test_a_regressed_compose_file_is_caught() -> None:
    """The checks fail on the regressions they exist for."""
    regressions: dict[str, Callable[[dict[str, Any]], object]] = {
        "a single-file mount": lambda s: s["worker"].update(
            volumes=["./feeds.yaml:/config/feeds.yaml:ro"]
        ),
        "a writable mount for a long-running service": lambda s: s["web"].update(
            volumes=[".:/config"]
        ),
        "no restart": lambda s: s["web"].pop("restart"),
        "started before Redis is healthy": lambda s: s["worker"].update(depends_on=["redis"]),
        "no health check": lambda s: s["redis"].pop("healthcheck"),
        "no append-only file": lambda s: s["redis"].update(command=["redis-server"]),
        "another web command": lambda s: s["web"].update(
            command=["gunicorn", "--bind", "0.0.0.0:8000", "aggregator.web:create_app()"]
        ),
        "a misspelt variable": lambda s: s["web"]["environment"].update(
            AGGREGATOR_REDIS=s["web"]["environment"].pop("AGGREGATOR_REDIS_URL")
        ),
        "a misspelt gunicorn option": lambda s: s["web"]["environment"].update(
            GUNICORN_CMD_ARGS="--bnd 0.0.0.0:8000"
        ),
        "a healthcheck on another port": lambda s: s["web"]["healthcheck"].update(
            test=["CMD", "python", "-c", "urlopen('http://127.0.0.1:8080/readyz')"]
        ),
    }
    for regression, change in regressions.items():
        document = compose()
        change(document["services"])
        try:
            check_fleet(document, cluster=False)
        except (AssertionError, KeyError, ValueError):
            continue
        pytest.fail(f"not caught: {regression}")


# --- what runs without Docker --------------------------------------------------------------


def as_here(command: Sequence[str]) -> list[str]:
    """A container's command run by this interpreter: `aggregator X` as `python -m aggregator
    X` (README.md: the same command), `gunicorn …` likewise, `python` as this one."""
    head, *rest = command
    if head == "python":
        return [sys.executable, *rest]
    return [sys.executable, "-m", head, *rest]


def environment_here(
    service: Mapping[str, Any], site: Site, redis_url: str, port: int | None = None
) -> dict[str, str]:
    """The service's environment with its addresses moved here: feeds.yaml is the site's,
    Redis the test's; with `port`, gunicorn binds that loopback port."""
    env = dict(site.env)
    env.update({name: str(value) for name, value in service.get("environment", {}).items()})
    env[config_module.ENV_CONFIG] = str(site.path)
    env[config_module.ENV_REDIS_URL] = redis_url
    if port is not None:
        args = shlex.split(env["GUNICORN_CMD_ARGS"])
        args[args.index("--bind") + 1] = f"127.0.0.1:{port}"
        # gunicorn's control socket is in ~/.gunicorn, shared by every run on this machine.
        env["GUNICORN_CMD_ARGS"] = shlex.join([*args, "--no-control-socket"])
    return env


def healthcheck_here(test: Sequence[str], port: int) -> list[str]:
    assert test[0] == "CMD"
    return [arg.replace(":8000/", f":{port}/") for arg in as_here(test[1:])]


def opml_of(url: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><opml version="2.0"><head><title>s</title></head>'
        f'<body><outline type="rss" text="Merged" xmlUrl="{url}"/></body></opml>'
    ).encode()


def test_fleet_runs_as_the_compose_file_starts_it(site: Site, redis_url: str) -> None:
    """The compose file's worker (as many as its replicas) and web commands, with their
    environment, poll and serve, and the web health check passes; README.md's `opml import
    --merge` through the cli service replaces feeds.yaml by a rename (a new inode: what a
    single-file mount would miss), and after README.md's `aggregator reload` the workers
    poll the merged source."""
    services = compose()["services"]
    first = rss([Item("First story", "https://a.example/1", hours_ago(1))])
    site.write([{"name": "first", "url": site.serve("first.xml", first)}])
    worker = services["worker"]
    workers = [
        site._spawn(as_here(worker["command"]), environment_here(worker, site, redis_url))
        for _ in range(worker["deploy"]["replicas"])
    ]
    port = free_port()
    web = site.web(
        *as_here(services["web"]["command"]),
        env=environment_here(services["web"], site, redis_url, port),
        port=port,
    )
    health = healthcheck_here(services["web"]["healthcheck"]["test"], port)
    checked = subprocess.run(health, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    wait_for(lambda: "First story" in titles(web.ok("/all.atom").feed()), "first polled", 20)

    second = rss([Item("Merged story", "https://b.example/1", hours_ago(1))])
    opml = opml_of(site.serve("second.xml", second))
    inode = os.stat(site.path).st_ino
    (importing,) = fleet_lines("opml import --merge")
    merged = subprocess.run(
        as_here(in_container(words_of(importing))),
        input=opml,
        env=environment_here(services["cli"], site, redis_url),
        capture_output=True,
        timeout=60,
    )
    assert merged.returncode == 0, merged.stderr
    assert os.stat(site.path).st_ino != inode, "feeds.yaml is replaced by a rename"

    (reloading,) = [line for line in fleet_lines("reload") if "docker compose exec" in line]
    assert in_container(words_of(reloading)) == ["aggregator", "reload"], reloading
    reloaded = subprocess.run(
        as_here(in_container(words_of(reloading))),
        env=environment_here(worker, site, redis_url),
        capture_output=True,
        timeout=60,
    )
    assert reloaded.returncode == 0, reloaded.stderr
    wait_for(lambda: "Merged story" in titles(web.ok("/all.atom").feed()), "merged polled", 20)
    for process in workers:
        assert stop(process) == 0


def test_web_healthcheck_fails_while_redis_is_unreachable(site: Site) -> None:
    """The web health check asks /readyz: a web process whose Redis is down is unhealthy."""
    site.write([{"name": "first", "url": site.serve("first.xml", rss([]))}])
    web = compose()["services"]["web"]
    port = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    site.web(*as_here(web["command"]), env=environment_here(web, site, dead, port), port=port)
    health = healthcheck_here(web["healthcheck"]["test"], port)
    done = subprocess.run(health, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "503" in done.stderr, done.stderr


def test_redis_healthcheck_tells_a_live_redis_from_a_dead_one(redis_url: str) -> None:
    redis_cli = require_redis_cli()
    test = compose()["services"]["redis"]["healthcheck"]["test"]
    assert test == REDIS_HEALTHCHECK
    port = str(urlsplit(redis_url).port)
    live = subprocess.run([redis_cli, "-p", port, *test[2:]], capture_output=True, text=True)
    assert (live.returncode, live.stdout.strip()) == (0, "PONG"), live.stderr
    dead_port = str(free_port())
    dead = subprocess.run([redis_cli, "-p", dead_port, *test[2:]], capture_output=True, text=True)
    assert dead.returncode != 0


def test_cluster_create_joins_the_nodes_once(tmp_path: Path) -> None:
    """The cluster variant's one-shot service, run on three fresh cluster-enabled nodes,
    assigns every slot; run again (as every `docker compose up` does), it changes nothing
    and succeeds, so the services waiting for it still start."""
    require_redis_cli()
    services = cluster_variant(tmp_path)["services"]
    nodes = redis_nodes(services)
    cluster = Cluster(masters_wanted=len(nodes))
    try:
        ports = [cluster._start_node() for _ in nodes]
        *shell, script = services["cluster-create"]["command"]
        for node, port in zip(nodes, ports, strict=True):
            address = services[node]["networks"]["fleet"]["ipv4_address"]
            script = script.replace(f"-h {address} -p 6379", f"-h 127.0.0.1 -p {port}")
            script = script.replace(f"{address}:6379", f"127.0.0.1:{port}")
        assert "6379" not in script, script
        created = subprocess.run([*shell, script], capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stdout + created.stderr
        assert f"All {SLOTS} slots covered" in created.stdout, created.stdout
        again = subprocess.run([*shell, script], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "slots" not in again.stdout, "asked to create the cluster a second time"
        client = redis.Redis(port=ports[0], decode_responses=True)
        try:
            assert int(client.cluster("info")["cluster_slots_assigned"]) == SLOTS
        finally:
            client.close()
    finally:
        cluster.stop()
