"""Checks the deployment artifacts under deploy/ (run: python -m pytest -q deploy/tests/check_manifests.py).

What a schema validator cannot see is checked here, one function per property, each
returning the problems it found (an empty list: fine):

- every Kubernetes manifest against the JSON schemas bundled in `kubernetes-validate`
  (offline, strict: unknown fields are errors); skipped when it is not installed, failed
  instead under SQUALL_REQUIRE_TOOLS=1;
- the StatefulSet, its Services, PodDisruptionBudget and ConfigMap against each other:
  images, probes, ports, selectors, the headless Service, the data volume against the
  config's `data_dir`, the config's peers against the pods' DNS names;
- every node config here (the ConfigMap's, docker/, systemd/, examples/edge-cloud/) parsed
  with tomllib and checked against the rules of adapters/src/config.rs (known fields,
  required fields, ids, addresses, layout, pools, sites and remotes); and with
  `squall check-config FILE` when the built binary has that command;
- the edge + cloud DFG files: Cascade's format as udl/host/src/dfg.rs reads it, and
  consistent with the configs and the example plugin;
- the systemd unit with `systemd-analyze verify` and `security` when systemd is there.

Each check has a test that breaks a copy of the manifests and expects the check to
complain (`test_check_can_fail`), so none of them can pass vacuously.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1]
REPO = DEPLOY.parent
K8S = DEPLOY / "k8s"
EDGE_CLOUD = DEPLOY / "examples" / "edge-cloud"
EDGECLOUD_PLUGIN_SRC = REPO / "udl" / "examples" / "edgecloud" / "src" / "lib.rs"

# Kubernetes versions the manifests must be valid for: an older one still widely run, and
# the newest whose schemas kubernetes-validate bundles.
KUBERNETES_VERSIONS = ("1.29.0", "latest")

REQUIRE_TOOLS = os.environ.get("SQUALL_REQUIRE_TOOLS") == "1"

# Where things are in the pods (the image's layout, deploy/docker/Dockerfile).
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
PORT_NAMES = ("peer", "client", "http")


def skip_or_fail(reason: str) -> None:
    """A missing optional tool skips the test, unless the test command asked for all tools."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason} (SQUALL_REQUIRE_TOOLS=1)")
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


@dataclass
class Manifests:
    """Every document of deploy/k8s, by file, and the kustomization."""

    documents: list[tuple[str, dict]]
    kustomization: dict
    files: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict]:
        return [doc for _, doc in self.documents if doc.get("kind") == kind]

    def one(self, kind: str) -> dict:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
        return found[0]


def load_manifests(directory: Path = K8S) -> Manifests:
    documents: list[tuple[str, dict]] = []
    kustomization: dict = {}
    files = sorted(p.name for p in directory.glob("*.y*ml"))
    for name in files:
        with open(directory / name, encoding="utf-8") as handle:
            for doc in yaml.safe_load_all(handle):
                if doc is None:
                    continue
                assert isinstance(doc, dict), f"{name}: a document is not a mapping"
                if doc.get("kind") == "Kustomization":
                    kustomization = doc
                else:
                    documents.append((name, doc))
    return Manifests(documents=documents, kustomization=kustomization, files=files)


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def node_container(statefulset: dict) -> dict:
    main = pod_spec(statefulset)["containers"]
    assert main, "the StatefulSet has no container"
    return main[0]


def container_ports(container: dict) -> dict[str, int]:
    return {p.get("name", str(p["containerPort"])): p["containerPort"] for p in container.get("ports", [])}


def resolve_port(container: dict, port: Any) -> int | None:
    """A probe's or Service's target port (name or number) as a declared containerPort."""
    declared = container_ports(container)
    if isinstance(port, int):
        return port if port in declared.values() else None
    return declared.get(str(port))


def config_from_configmap(manifests: Manifests) -> tuple[str, str, dict]:
    """(ConfigMap name, key, parsed TOML) of the node config."""
    configmap = manifests.one("ConfigMap")
    data = configmap.get("data", {})
    keys = [k for k in data if k.endswith(".toml")]
    assert len(keys) == 1, f"the ConfigMap should hold one .toml key, has {sorted(data)}"
    return configmap["metadata"]["name"], keys[0], tomllib.loads(data[keys[0]])


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def mount_path_covering(path: str, mounts: list[dict]) -> dict | None:
    """The volume mount under which `path` lies (the longest mount path), if any."""
    best = None
    for mount in mounts:
        prefix = mount["mountPath"].rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            if best is None or len(prefix) > len(best["mountPath"].rstrip("/")):
                best = mount
    return best


def arg_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


# ---------------------------------------------------------------------------------------
# Kubernetes checks: one property each; each returns its problems.
# ---------------------------------------------------------------------------------------


def check_kustomization_lists_every_file(m: Manifests) -> list[str]:
    listed = m.kustomization.get("resources", [])
    files = {name for name in m.files if name not in ("kustomization.yaml", "kustomization.yml")}
    problems = [f"kustomization.yaml lists {r}, which is not in deploy/k8s" for r in listed if r not in files]
    problems += [f"{f} is not listed in kustomization.yaml resources" for f in sorted(files - set(listed))]
    return problems


def check_images(m: Manifests) -> list[str]:
    problems = []
    for workload in m.of_kind("StatefulSet") + m.of_kind("Deployment") + m.of_kind("DaemonSet"):
        for container in containers(workload):
            if not str(container.get("image", "")).strip():
                problems.append(f"{workload['metadata']['name']}/{container.get('name')}: no image")
    return problems


def check_probes(m: Manifests) -> list[str]:
    problems = []
    wanted = {
        "livenessProbe": LIVENESS_PATH,
        "readinessProbe": READINESS_PATH,
        "startupProbe": LIVENESS_PATH,
    }
    for sts in m.of_kind("StatefulSet"):
        container = node_container(sts)
        http_port = container_ports(container).get("http")
        for probe_name, path in wanted.items():
            probe = container.get(probe_name)
            if probe is None:
                if probe_name != "startupProbe":
                    problems.append(f"{container['name']}: no {probe_name}")
                continue
            get = probe.get("httpGet")
            if get is None:
                problems.append(f"{container['name']}: {probe_name} is not an httpGet probe")
                continue
            if get.get("path") != path:
                problems.append(f"{container['name']}: {probe_name} gets {get.get('path')}, not {path}")
            port = resolve_port(container, get.get("port"))
            if port is None:
                problems.append(f"{container['name']}: {probe_name} port {get.get('port')!r} is not a declared containerPort")
            elif port != http_port:
                problems.append(f"{container['name']}: {probe_name} uses port {port}, not the http port {http_port}")
    return problems


def check_data_volume(m: Manifests) -> list[str]:
    """Every volumeClaimTemplate is mounted, and the config's data_dir lies on one."""
    problems = []
    _, _, config = config_from_configmap(m)
    data_dir = config["node"]["data_dir"]
    for sts in m.of_kind("StatefulSet"):
        container = node_container(sts)
        mounts = container.get("volumeMounts", [])
        claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        if not claims:
            problems.append(f"{sts['metadata']['name']}: no volumeClaimTemplates: the data would not survive a restart")
        for claim in sorted(claims):
            if not any(mount["name"] == claim for mount in mounts):
                problems.append(f"volumeClaimTemplate {claim} is not mounted in {container['name']}")
        covering = mount_path_covering(data_dir, mounts)
        if covering is None or covering["name"] not in claims:
            where = "no mount" if covering is None else f"volume {covering['name']}, not a volumeClaimTemplate"
            problems.append(f"the config's data_dir {data_dir} is on {where}")
        elif covering.get("readOnly"):
            problems.append(f"the data volume at {covering['mountPath']} is mounted read-only")
    return problems


def check_config_mount(m: Manifests) -> list[str]:
    """The container reads the ConfigMap's config, and takes its node id from the pod name."""
    problems = []
    name, key, _ = config_from_configmap(m)
    for sts in m.of_kind("StatefulSet"):
        container = node_container(sts)
        args = list(container.get("command", [])) + list(container.get("args", []))
        config_path = arg_value(args, "--config")
        if config_path is None:
            problems.append(f"{container['name']}: no --config argument")
            continue
        if "--node-id-from-hostname" not in args:
            problems.append(f"{container['name']}: without --node-id-from-hostname every pod would take the config's node id")
        volumes = {v["name"]: v for v in pod_spec(sts).get("volumes", [])}
        mount = mount_path_covering(config_path, container.get("volumeMounts", []))
        volume = volumes.get(mount["name"]) if mount else None
        if volume is None or volume.get("configMap", {}).get("name") != name:
            problems.append(f"--config {config_path} is not on a volume of the ConfigMap {name}")
            continue
        relative = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
        items = volume["configMap"].get("items")
        available = {item["path"]: item["key"] for item in items} if items else {key: key}
        if available.get(relative) != key:
            problems.append(f"--config {config_path} is not the ConfigMap key {key}")
    return problems


def check_headless_service(m: Manifests) -> list[str]:
    problems = []
    services = {s["metadata"]["name"]: s for s in m.of_kind("Service")}
    for sts in m.of_kind("StatefulSet"):
        name = sts["spec"].get("serviceName")
        service = services.get(name)
        if service is None:
            problems.append(f"StatefulSet {sts['metadata']['name']}: serviceName {name!r} is not a Service here")
            continue
        if service["spec"].get("clusterIP") != "None":
            problems.append(f"Service {name} (the StatefulSet's serviceName) is not headless (clusterIP: None)")
        if service["spec"].get("publishNotReadyAddresses") is not True:
            problems.append(f"Service {name}: publishNotReadyAddresses must be true: peers find each other before they are ready")
    return problems


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_selectors(m: Manifests) -> list[str]:
    problems = []
    workloads = m.of_kind("StatefulSet")
    template_labels = [w["spec"]["template"]["metadata"].get("labels", {}) for w in workloads]
    for sts, labels in zip(workloads, template_labels):
        selector = sts["spec"]["selector"].get("matchLabels", {})
        if not labels_match(selector, labels):
            problems.append(f"StatefulSet {sts['metadata']['name']}: selector {selector} does not match its pod labels {labels}")
    for service in m.of_kind("Service"):
        selector = service["spec"].get("selector", {})
        if not any(labels_match(selector, labels) for labels in template_labels):
            problems.append(f"Service {service['metadata']['name']}: selector {selector} matches no pod template")
    for pdb in m.of_kind("PodDisruptionBudget"):
        selector = pdb["spec"].get("selector", {}).get("matchLabels", {})
        if not any(labels_match(selector, labels) for labels in template_labels):
            problems.append(f"PodDisruptionBudget {pdb['metadata']['name']}: selector {selector} matches no pod template")
    return problems


def check_namespaces(m: Manifests) -> list[str]:
    namespaces = {doc["metadata"]["name"] for doc in m.of_kind("Namespace")}
    problems = []
    for name, doc in m.documents:
        if doc["kind"] == "Namespace":
            continue
        namespace = doc["metadata"].get("namespace")
        if namespace is None:
            problems.append(f"{name}: {doc['kind']} {doc['metadata']['name']} has no namespace")
        elif namespaces and namespace not in namespaces:
            problems.append(f"{name}: {doc['kind']} {doc['metadata']['name']} is in {namespace}, not in {sorted(namespaces)}")
    return problems


def check_peers(m: Manifests) -> list[str]:
    """The config's peers are the StatefulSet's pods, by their stable DNS names."""
    problems = []
    _, _, config = config_from_configmap(m)
    peers = config.get("cluster", {}).get("peers", [])
    for sts in m.of_kind("StatefulSet"):
        replicas = sts["spec"].get("replicas", 1)
        name = sts["metadata"]["name"]
        namespace = sts["metadata"].get("namespace", "default")
        service = sts["spec"].get("serviceName")
        ports = container_ports(node_container(sts))
        if len(peers) != replicas:
            problems.append(f"the config lists {len(peers)} peers but the StatefulSet has {replicas} replicas")
        for i, peer in enumerate(sorted(peers, key=lambda p: p.get("id", -1))):
            if peer.get("id") != i:
                problems.append(f"peer ids should be 0..{replicas - 1} (pod ordinals), found {peer.get('id')}")
                continue
            host = f"{name}-{i}.{service}.{namespace}.svc.cluster.local"
            for field_name, port_name in (("addr", "peer"), ("client_addr", "client")):
                try:
                    got_host, got_port = split_host_port(peer.get(field_name, ""))
                except ValueError as error:
                    problems.append(f"peer {i} {field_name}: {error}")
                    continue
                if got_host != host:
                    problems.append(f"peer {i} {field_name} host {got_host}, expected {host}")
                if got_port != ports.get(port_name):
                    problems.append(f"peer {i} {field_name} port {got_port} is not the {port_name} containerPort {ports.get(port_name)}")
    return problems


def check_ports(m: Manifests) -> list[str]:
    """The config listens where the container declares its ports; Services target them."""
    problems = []
    _, _, config = config_from_configmap(m)
    node = config["node"]
    listen = {
        "client": node.get("client_addr"),
        "http": node.get("http_addr"),
        "peer": node.get("peer_listen_addr"),
    }
    for sts in m.of_kind("StatefulSet"):
        container = node_container(sts)
        declared = container_ports(container)
        for port_name in PORT_NAMES:
            if port_name not in declared:
                problems.append(f"{container['name']}: no containerPort named {port_name}")
                continue
            if listen[port_name] is None:
                problems.append(f"the config's [node] has no listen address for {port_name}")
                continue
            host, port = split_host_port(listen[port_name])
            if port != declared[port_name]:
                problems.append(f"the config listens for {port_name} on {port}, the containerPort is {declared[port_name]}")
            if host not in ("0.0.0.0", "::"):
                problems.append(f"the config listens for {port_name} on {host}: other pods could not reach it")
        for service in m.of_kind("Service"):
            if not labels_match(service["spec"].get("selector", {}), sts["spec"]["template"]["metadata"].get("labels", {})):
                continue
            for port in service["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                resolved = resolve_port(container, target)
                if resolved is None:
                    problems.append(f"Service {service['metadata']['name']} port {port['port']}: targetPort {target!r} is not a containerPort")
                elif resolved != port["port"]:
                    problems.append(f"Service {service['metadata']['name']} port {port['port']} forwards to {resolved}: use the same number")
        service_ports = {
            s["metadata"]["name"]: {p["port"] for p in s["spec"].get("ports", [])} for s in m.of_kind("Service")
        }
        headless = sts["spec"].get("serviceName")
        if declared.get("peer") not in service_ports.get(headless, set()):
            problems.append(f"the headless Service {headless} does not expose the peer port")
        clients = [name for name, ports in service_ports.items() if name != headless and {declared.get("client"), declared.get("http")} <= ports]
        if not clients:
            problems.append("no Service besides the headless one exposes the client and http ports")
    return problems


def check_statefulset_policy(m: Manifests) -> list[str]:
    problems = []
    for sts in m.of_kind("StatefulSet"):
        spec = sts["spec"]
        if spec.get("podManagementPolicy") != "Parallel":
            problems.append("podManagementPolicy must be Parallel: a node waits for its peers, so pods must start together")
        pod_security = pod_spec(sts).get("securityContext", {})
        for container in containers(sts):
            security = container.get("securityContext", {})
            if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
                problems.append(f"{container['name']}: not runAsNonRoot")
            if security.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{container['name']}: the root filesystem is writable")
            if security.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{container['name']}: allowPrivilegeEscalation is not false")
            if "ALL" not in security.get("capabilities", {}).get("drop", []):
                problems.append(f"{container['name']}: capabilities are not all dropped")
            resources = container.get("resources", {})
            if not resources.get("requests") or not resources.get("limits", {}).get("memory"):
                problems.append(f"{container['name']}: resources need requests and a memory limit")
        grace = pod_spec(sts).get("terminationGracePeriodSeconds", 30)
        if grace <= 5:
            problems.append(f"terminationGracePeriodSeconds {grace} does not leave the node its 5 s to leave the group")
    return problems


def check_disruption_budget(m: Manifests) -> list[str]:
    problems = []
    _, _, config = config_from_configmap(m)
    budgets = m.of_kind("PodDisruptionBudget")
    if len(budgets) != 1:
        return [f"expected one PodDisruptionBudget, found {len(budgets)}"]
    unavailable = budgets[0]["spec"].get("maxUnavailable")
    if unavailable != 1:
        problems.append(f"PodDisruptionBudget maxUnavailable is {unavailable!r}, not 1")
    replicas = m.one("StatefulSet")["spec"].get("replicas", 1)
    for i, subgroup in enumerate(config.get("layout", {}).get("subgroups", [])):
        # Shards are disjoint: with one pod down, every shard must still find min_nodes.
        if subgroup["shards"] * subgroup["min_nodes"] > replicas - (unavailable or 0):
            problems.append(f"layout.subgroups[{i}] needs {subgroup['shards'] * subgroup['min_nodes']} nodes: a disruption the budget allows would stop it")
    return problems


K8S_CHECKS: list[Callable[[Manifests], list[str]]] = [
    check_kustomization_lists_every_file,
    check_images,
    check_probes,
    check_data_volume,
    check_config_mount,
    check_headless_service,
    check_selectors,
    check_namespaces,
    check_peers,
    check_ports,
    check_statefulset_policy,
    check_disruption_budget,
]


# ---------------------------------------------------------------------------------------
# Node configs (adapters/src/config.rs, `deny_unknown_fields` everywhere).
# ---------------------------------------------------------------------------------------

# Per table: (required fields, optional fields).
CONFIG_SCHEMA: dict[str, tuple[set[str], set[str]]] = {
    "": ({"version", "node", "cluster", "layout"}, {"limits", "timing", "auth", "pools", "site", "remotes", "wan"}),
    "node": ({"id", "data_dir", "client_addr"}, {"http_addr", "peer_listen_addr"}),
    "cluster": ({"peers"}, {"id", "restart_leader", "contacts"}),
    "cluster.peers": ({"id", "addr", "client_addr"}, set()),
    "layout": ({"subgroups"}, set()),
    "layout.subgroups": ({"kind", "shards", "min_nodes", "max_nodes"}, set()),
    "limits": (set(), {
        "key_bytes_max", "object_bytes_max", "frame_bytes_max", "clients_max", "requests_in_flight_max",
        "watchers_max", "watch_queue_max", "dedup_clients_max", "dedup_per_client_max", "pools_max",
        "udl_workers", "udl_queue_max", "udl_emit_queue_max", "history_cache_bytes",
        "history_retention_s", "log_preallocate_bytes", "log_segment_bytes", "disk_reserve_bytes",
        "metadata_log_compact_bytes", "watch_replay_bytes",
    }),
    "timing": (set(), {"heartbeat_interval_ms", "suspicion_timeout_ms", "restart_grace_ms", "read_lease_ms"}),
    "auth": (set(), {"tokens"}),
    "auth.tokens": ({"token", "role"}, set()),
    "pools": ({"path", "kind"}, {"subgroup", "shards", "affinity"}),
    "site": ({"name", "kind"}, set()),
    "remotes": ({"name", "addresses"}, {"token", "address_map"}),
    "wan": (set(), {
        "outbox_subgroup", "outbox_entries_max", "outbox_bytes_max", "outbox_full", "batch_max",
        "batch_bytes_max", "retry_backoff_max_ms",
    }),
}
SUBGROUP_KINDS = {"persistent", "volatile", "trigger"}
ROLES = ["read", "write", "admin"]
SITE_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
DEDUP_PER_CLIENT_MAX_DEFAULT = 256


def check_fields(table: Any, where: str, schema_key: str) -> list[str]:
    if not isinstance(table, dict):
        return [f"{where or 'the file'}: expected a table"]
    required, optional = CONFIG_SCHEMA[schema_key]
    problems = [f"{where or 'the file'}: missing {name}" for name in sorted(required - table.keys())]
    problems += [f"{where or 'the file'}: unknown field {name}" for name in sorted(table.keys() - required - optional)]
    return problems


def check_node_config(config: dict) -> list[str]:
    """The rules `squall node` applies at start (adapters/src/config.rs), for files that a
    binary of this checkout may not read yet."""
    problems = check_fields(config, "", "")
    if problems:
        return problems
    if config["version"] != 1:
        problems.append(f"version = {config['version']}, this format is 1")
    for section in ("node", "cluster", "layout", "limits", "timing", "auth", "site", "wan"):
        if section in config:
            problems += check_fields(config[section], section, section)
    for array in ("cluster.peers", "layout.subgroups", "auth.tokens"):
        section, key = array.split(".")
        for i, entry in enumerate(config.get(section, {}).get(key, [])):
            problems += check_fields(entry, f"{array}[{i}]", array)
    for array in ("pools", "remotes"):
        for i, entry in enumerate(config.get(array, [])):
            problems += check_fields(entry, f"{array}[{i}]", array)
    if problems:
        return problems

    peers = config["cluster"]["peers"]
    ids = [peer["id"] for peer in peers]
    if not peers:
        problems.append("cluster.peers is empty")
    if len(set(ids)) != len(ids):
        problems.append(f"cluster.peers ids repeat: {ids}")
    if config["node"]["id"] not in ids:
        problems.append(f"node.id {config['node']['id']} is not a peer id {ids}")
    addresses: list[str] = []
    for i, peer in enumerate(peers):
        for name in ("addr", "client_addr"):
            try:
                _, port = split_host_port(peer[name])
                if not 0 < port < 65536:
                    problems.append(f"cluster.peers[{i}].{name}: port {port}")
            except ValueError as error:
                problems.append(f"cluster.peers[{i}].{name}: {error}")
            addresses.append(peer[name])
    if len(set(addresses)) != len(addresses):
        problems.append("cluster.peers: every node-to-node and client address must be distinct")
    for name in ("client_addr", "http_addr", "peer_listen_addr"):
        if name in config["node"]:
            try:
                split_host_port(config["node"][name])
            except ValueError as error:
                problems.append(f"node.{name}: {error}")
    if not config["node"]["data_dir"]:
        problems.append("node.data_dir is empty")

    subgroups = config["layout"]["subgroups"]
    if not subgroups:
        problems.append("layout.subgroups is empty")
    for i, sg in enumerate(subgroups):
        if sg["kind"] not in SUBGROUP_KINDS:
            problems.append(f"layout.subgroups[{i}].kind {sg['kind']!r}")
        if sg["shards"] < 1 or sg["min_nodes"] < 1 or sg["max_nodes"] < sg["min_nodes"]:
            problems.append(f"layout.subgroups[{i}]: shards >= 1, 1 <= min_nodes <= max_nodes")
        if sg["shards"] * sg["min_nodes"] > len(peers):
            problems.append(f"layout.subgroups[{i}] needs {sg['shards'] * sg['min_nodes']} nodes, the cluster has {len(peers)}")
    kinds = [sg["kind"] for sg in subgroups]
    paths = []
    for i, pool in enumerate(config.get("pools", [])):
        if not pool["path"].startswith("/") or pool["path"].endswith("/"):
            problems.append(f"pools[{i}].path {pool['path']!r}: absolute, no trailing /")
        if pool["kind"] not in kinds:
            problems.append(f"pools[{i}]: no {pool['kind']} subgroup in layout.subgroups")
        paths.append(pool["path"])
    if len(set(paths)) != len(paths):
        problems.append("pools: a path repeats")

    tokens = [entry["token"] for entry in config.get("auth", {}).get("tokens", [])]
    if len(set(tokens)) != len(tokens) or any(not t.strip() for t in tokens):
        problems.append("auth.tokens: tokens must be non-empty and unique")
    problems += [f"auth.tokens: role {e['role']!r}" for e in config.get("auth", {}).get("tokens", []) if e["role"] not in ROLES]

    site = config.get("site")
    if site is not None:
        if not SITE_NAME.match(site["name"]):
            problems.append(f"site.name {site['name']!r} is not 1 to 64 of [a-z0-9_-]")
        if site["kind"] not in ("edge", "cloud"):
            problems.append(f"site.kind {site['kind']!r} is not edge or cloud")
    names = []
    for i, remote in enumerate(config.get("remotes", [])):
        if not SITE_NAME.match(remote["name"]):
            problems.append(f"remotes[{i}].name {remote['name']!r} is not 1 to 64 of [a-z0-9_-]")
        if site is not None and remote["name"] == site["name"]:
            problems.append(f"remotes[{i}].name is this cluster's own site")
        names.append(remote["name"])
        if not remote["addresses"]:
            problems.append(f"remotes[{i}].addresses is empty")
        for j, address in enumerate(remote["addresses"]):
            try:
                split_host_port(address)
            except ValueError as error:
                problems.append(f"remotes[{i}].addresses[{j}]: {error}")
    if len(set(names)) != len(names):
        problems.append("remotes: a name repeats")
    if config.get("remotes") and "persistent" not in kinds:
        problems.append("remotes: the WAN outbox needs a persistent data subgroup")
    wan = config.get("wan", {})
    dedup = config.get("limits", {}).get("dedup_per_client_max", DEDUP_PER_CLIENT_MAX_DEFAULT)
    if "batch_max" in wan and not 1 <= wan["batch_max"] <= dedup // 2:
        problems.append(f"wan.batch_max {wan['batch_max']} is not 1 to limits.dedup_per_client_max / 2 = {dedup // 2}")
    if wan.get("outbox_full", "block") not in ("block", "reject"):
        problems.append(f"wan.outbox_full {wan['outbox_full']!r} is not block or reject")
    for name in ("outbox_entries_max", "outbox_bytes_max", "batch_bytes_max", "retry_backoff_max_ms"):
        if name in wan and wan[name] <= 0:
            problems.append(f"wan.{name} must be positive")
    return problems


def config_files() -> dict[str, str]:
    """Every node config under deploy/, by a readable name: TOML text."""
    files = {
        "docker/squall.toml": DEPLOY / "docker" / "squall.toml",
        "systemd/squall.toml": DEPLOY / "systemd" / "squall.toml",
        "examples/edge-cloud/edge.toml": EDGE_CLOUD / "edge.toml",
        "examples/edge-cloud/cloud.toml": EDGE_CLOUD / "cloud.toml",
    }
    texts = {name: path.read_text(encoding="utf-8") for name, path in files.items()}
    configmap = load_manifests().one("ConfigMap")
    for key, value in configmap["data"].items():
        if key.endswith(".toml"):
            texts[f"k8s/configmap.yaml:{key}"] = value
    return texts


def squall_binary() -> Path | None:
    explicit = os.environ.get("SQUALL_BIN")
    if explicit:
        return Path(explicit)
    for build in ("debug", "release"):
        candidate = REPO / "target" / build / "squall"
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------
# DFG files (udl/host/src/dfg.rs), checked on their own and against the configs.
# ---------------------------------------------------------------------------------------

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
VERTEX_FIELDS = {
    "pathname", "user_defined_logic_list", "shard_dispatcher_list", "execution_environment",
    "user_defined_logic_stateful_list", "user_defined_logic_hook_list",
    "user_defined_logic_config_list", "destinations", "site",
}
LIST_VALUES = {
    "shard_dispatcher_list": {"one", "all"},
    "user_defined_logic_hook_list": {"trigger", "ordered", "both"},
    "user_defined_logic_stateful_list": {"stateful", "stateless", "singlethreaded"},
}


def split_destination(key: str) -> tuple[str | None, str]:
    if key.startswith("/"):
        return None, key
    site, _, path = key.partition(":")
    return site, path


def check_dfgs(dfgs: Any) -> list[str]:
    if isinstance(dfgs, dict):
        dfgs = [dfgs]
    if not isinstance(dfgs, list):
        return ["a dfgs.json is an array of DFGs"]
    problems = []
    for n, dfg in enumerate(dfgs):
        where = f"DFG #{n}"
        if set(dfg) - {"id", "desc", "graph"}:
            problems.append(f"{where}: unknown fields {sorted(set(dfg) - {'id', 'desc', 'graph'})}")
        if not UUID.match(str(dfg.get("id", ""))):
            problems.append(f"{where}: id {dfg.get('id')!r} is not a UUID")
        pathnames = []
        for vertex in dfg.get("graph", []):
            at = f"{where} vertex {vertex.get('pathname')}"
            if set(vertex) - VERTEX_FIELDS:
                problems.append(f"{at}: unknown fields {sorted(set(vertex) - VERTEX_FIELDS)}")
            path = vertex.get("pathname", "")
            if not path.startswith("/") or "//" in path:
                problems.append(f"{at}: pathname is not an absolute path")
            pathnames.append(path.rstrip("/"))
            udls = vertex.get("user_defined_logic_list", [])
            if not udls:
                problems.append(f"{at}: no UDL")
            problems += [f"{at}: UDL {u!r} is not a UUID" for u in udls if not UUID.match(str(u))]
            site = vertex.get("site")
            if site is not None and not (isinstance(site, str) and re.fullmatch(r"[a-z0-9_-]{1,64}", site)):
                problems.append(f"{at}: site {site!r} is not a site name")
            for list_name in VERTEX_FIELDS - {"pathname", "user_defined_logic_list", "site"}:
                if list_name in vertex and len(vertex[list_name]) != len(udls):
                    problems.append(f"{at}: {list_name} has {len(vertex[list_name])} entries, {len(udls)} UDLs")
            for list_name, allowed in LIST_VALUES.items():
                problems += [f"{at}: {list_name} value {v!r}" for v in vertex.get(list_name, []) if v not in allowed]
            for config in vertex.get("user_defined_logic_config_list", []):
                if not isinstance(config, dict):
                    problems.append(f"{at}: a UDL configuration is not a JSON object")
            for destinations in vertex.get("destinations", []):
                for key, action in destinations.items():
                    site, pool = split_destination(key)
                    if site is not None and not SITE_NAME.match(site):
                        problems.append(f"{at}: destination {key!r}: bad site name")
                    if not pool.startswith("/") or "//" in pool:
                        problems.append(f"{at}: destination {key!r}: not an absolute pool path")
                    if action not in ("put", "trigger_put"):
                        problems.append(f"{at}: destination {key!r}: action {action!r}")
        if len(set(pathnames)) != len(pathnames):
            problems.append(f"{where}: a pathname repeats")
    return problems


def edgecloud_plugin_uuid() -> str:
    source = EDGECLOUD_PLUGIN_SRC.read_text(encoding="utf-8")
    found = re.search(r'export_udl!\s*\{\s*uuid:\s*"([^"]+)"', source)
    assert found, f"no export_udl! uuid in {EDGECLOUD_PLUGIN_SRC}"
    return found.group(1).lower()


@dataclass
class EdgeCloud:
    edge: dict
    cloud: dict
    edge_dfgs: list
    cloud_dfgs: list
    plugin_uuid: str


def load_edge_cloud() -> EdgeCloud:
    return EdgeCloud(
        edge=tomllib.loads((EDGE_CLOUD / "edge.toml").read_text(encoding="utf-8")),
        cloud=tomllib.loads((EDGE_CLOUD / "cloud.toml").read_text(encoding="utf-8")),
        edge_dfgs=json.loads((EDGE_CLOUD / "edge-dfgs.json").read_text(encoding="utf-8")),
        cloud_dfgs=json.loads((EDGE_CLOUD / "cloud-dfgs.json").read_text(encoding="utf-8")),
        plugin_uuid=edgecloud_plugin_uuid(),
    )


def pool_of(config: dict, path: str) -> dict | None:
    path = path.rstrip("/")
    for pool in config.get("pools", []):
        if path == pool["path"] or path.startswith(pool["path"] + "/"):
            return pool
    return None


def check_edge_cloud(example: EdgeCloud) -> list[str]:
    """The two sites, their DFGs and the plugin agree."""
    problems = []
    sites = {"edge": example.edge, "cloud": example.cloud}
    for kind, config in sites.items():
        if config.get("site", {}).get("kind") != kind:
            problems.append(f"{kind}.toml: [site] kind is not {kind!r}")
    remotes = {r["name"]: r for r in example.edge.get("remotes", [])}
    by_site_name = {config.get("site", {}).get("name"): config for config in sites.values()}
    for kind, dfgs in (("edge", example.edge_dfgs), ("cloud", example.cloud_dfgs)):
        config = sites[kind]
        problems += [f"{kind}-dfgs.json: {p}" for p in check_dfgs(dfgs)]
        for dfg in dfgs:
            for vertex in dfg.get("graph", []):
                at = f"{kind}-dfgs.json {vertex.get('pathname')}"
                if pool_of(config, vertex["pathname"]) is None:
                    problems.append(f"{at}: no pool of {kind}.toml holds this vertex")
                for uuid in vertex.get("user_defined_logic_list", []):
                    if uuid.lower() != example.plugin_uuid:
                        problems.append(f"{at}: UDL {uuid} is not the edgecloud plugin's {example.plugin_uuid}")
                for destinations in vertex.get("destinations", []):
                    for key in destinations:
                        site, path = split_destination(key)
                        target = config
                        if site is not None:
                            if site not in remotes or kind != "edge":
                                problems.append(f"{at}: destination {key}: no [[remotes]] named {site!r} in {kind}.toml")
                                continue
                            target = by_site_name.get(site)
                            if target is None:
                                problems.append(f"{at}: destination {key}: no example site named {site!r}")
                                continue
                        if pool_of(target, path) is None:
                            problems.append(f"{at}: destination {key}: no pool holds {path} at that site")
    roles = {e["token"]: e["role"] for e in example.cloud.get("auth", {}).get("tokens", [])}
    for name, remote in remotes.items():
        token = remote.get("token")
        if token is not None and roles.get(token) not in ("write", "admin"):
            problems.append(f"edge.toml remotes {name}: its token is not a write token of cloud.toml")
    return problems


# ---------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return load_manifests()


@pytest.mark.parametrize("check", K8S_CHECKS, ids=lambda c: c.__name__)
def test_manifests(check: Callable[[Manifests], list[str]], manifests: Manifests) -> None:
    problems = check(manifests)
    assert not problems, "\n".join(problems)


def test_manifests_against_kubernetes_schemas(manifests: Manifests) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        skip_or_fail("kubernetes-validate is not installed (pip install kubernetes-validate)")
    problems = []
    for version in KUBERNETES_VERSIONS:
        wanted = kubernetes_validate.utils.latest_version() if version == "latest" else version
        for name, doc in manifests.documents:
            try:
                kubernetes_validate.validate(doc, wanted, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                problems.append(f"{name} {doc['kind']} (Kubernetes {wanted}): {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.append(f"{name}: {error}")
    assert not problems, "\n".join(problems)


def test_kustomize_build_matches_the_manifests(manifests: Manifests) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kustomize build not run (the resources list is checked anyway)")
    built = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    expected = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in manifests.documents)
    assert sorted((doc["kind"], doc["metadata"]["name"]) for doc in objects) == expected
    for doc in objects:
        if doc["kind"] == "StatefulSet":
            # kustomize's labels must not leak into the (immutable) selector.
            original = manifests.one("StatefulSet")
            assert doc["spec"]["selector"] == original["spec"]["selector"]


@pytest.mark.parametrize("name", sorted(config_files()))
def test_node_config(name: str) -> None:
    config = tomllib.loads(config_files()[name])
    problems = check_node_config(config)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(config_files()))
def test_node_config_with_squall_binary(name: str, tmp_path: Path) -> None:
    binary = squall_binary()
    if binary is None or not binary.is_file():
        pytest.skip("no squall binary (set SQUALL_BIN or build target/debug/squall)")
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30).stdout
    if not re.search(r"^\s+check-config\b", help_text, re.MULTILINE):
        pytest.skip(f"{binary} has no check-config command: the configs are checked by check_node_config only")
    path = tmp_path / "squall.toml"
    path.write_text(config_files()[name], encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUALL__")}
    checked = subprocess.run([str(binary), "check-config", str(path)], capture_output=True, text=True, timeout=30, env=env)
    assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"


@pytest.mark.parametrize(
    "path",
    [EDGE_CLOUD / "edge-dfgs.json", EDGE_CLOUD / "cloud-dfgs.json", REPO / "udl/examples/edgecloud/dfgs.json"],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_dfgs(path: Path) -> None:
    problems = check_dfgs(json.loads(path.read_text(encoding="utf-8")))
    assert not problems, "\n".join(problems)


def test_edge_cloud_example() -> None:
    problems = check_edge_cloud(load_edge_cloud())
    assert not problems, "\n".join(problems)


def systemd_unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (verify checks it)."""
    unit = (DEPLOY / "systemd" / "squall.service").read_text(encoding="utf-8")
    assert "ExecStart=/usr/local/bin/squall node --config /etc/squall/squall.toml" in unit
    binary = squall_binary()
    stand_in = str(binary) if binary and binary.is_file() else shutil.which("true") or "/bin/true"
    copy_path = tmp_path / "squall.service"
    copy_path.write_text(unit.replace("/usr/local/bin/squall", stand_in), encoding="utf-8")
    return copy_path


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = systemd_unit_copy(tmp_path)
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    complaints = [line for line in (verified.stdout + verified.stderr).splitlines() if "squall.service" in line]
    assert verified.returncode == 0 and complaints == [], verified.stdout + verified.stderr


# systemd-analyze security's exposure scale: 0 (locked down) to 10 (unprotected); the unit
# scores 1.7 with systemd 252.
SYSTEMD_EXPOSURE_MAX = 2.5


def test_systemd_unit_hardening(tmp_path: Path) -> None:
    unit_text = (DEPLOY / "systemd" / "squall.service").read_text(encoding="utf-8")
    settings = {}
    for line in unit_text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    for key, wanted in {
        "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
        "StateDirectory": "squall", "CapabilityBoundingSet": "", "Restart": "on-failure",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "SystemCallFilter": "@system-service",
    }.items():
        assert settings.get(key) == wanted, f"{key}={settings.get(key)!r}, want {wanted!r}"
    assert int(settings["LimitNOFILE"]) >= 4096
    stop_s = int(settings["TimeoutStopSec"].rstrip("s"))
    assert stop_s > 5, "the node needs up to 5 s to leave its group"
    toml_config = tomllib.loads((DEPLOY / "systemd" / "squall.toml").read_text(encoding="utf-8"))
    assert toml_config["node"]["data_dir"].startswith("/var/lib/squall"), "data_dir outside the StateDirectory"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: exposure not measured")
    unit = systemd_unit_copy(tmp_path)
    scored = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", scored.stdout + scored.stderr)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot score units offline: {scored.stderr.strip()[:200]}")
    assert float(found.group(1)) <= SYSTEMD_EXPOSURE_MAX, scored.stdout[-2000:]


# ---------------------------------------------------------------------------------------
# Every check can fail: each mutation breaks a copy in one way, and the named check must
# complain about it.
# ---------------------------------------------------------------------------------------


def _sts(m: Manifests) -> dict:
    return m.one("StatefulSet")


def _container(m: Manifests) -> dict:
    return node_container(_sts(m))


def _service(m: Manifests, name: str) -> dict:
    return next(s for s in m.of_kind("Service") if s["metadata"]["name"] == name)


def _edit_config(m: Manifests, edit: Callable[[str], str]) -> None:
    configmap = m.one("ConfigMap")
    key = next(k for k in configmap["data"] if k.endswith(".toml"))
    configmap["data"][key] = edit(configmap["data"][key])


K8S_MUTATIONS: list[tuple[str, Callable[[Manifests], list[str]], Callable[[Manifests], None]]] = [
    ("file left out of kustomization", check_kustomization_lists_every_file,
     lambda m: m.kustomization["resources"].remove("pdb.yaml")),
    ("empty image", check_images, lambda m: _container(m).update(image="")),
    ("liveness on /readyz", check_probes, lambda m: _container(m)["livenessProbe"]["httpGet"].update(path="/readyz")),
    ("readiness on an undeclared port", check_probes, lambda m: _container(m)["readinessProbe"]["httpGet"].update(port="metrics")),
    ("readiness on the client port", check_probes, lambda m: _container(m)["readinessProbe"]["httpGet"].update(port=7100)),
    ("data_dir off the volume", check_data_volume,
     lambda m: _edit_config(m, lambda t: t.replace('data_dir = "/var/lib/squall/data"', 'data_dir = "/data/squall"'))),
    ("claim not mounted", check_data_volume,
     lambda m: _sts(m)["spec"]["volumeClaimTemplates"][0]["metadata"].update(name="storage")),
    ("config path wrong", check_config_mount,
     lambda m: _container(m).update(args=["--config", "/etc/squall/node.toml", "--node-id-from-hostname"])),
    ("no node id from hostname", check_config_mount,
     lambda m: _container(m).update(args=["--config", "/etc/squall/squall.toml"])),
    ("serviceName not the headless Service", check_headless_service, lambda m: _sts(m)["spec"].update(serviceName="squall")),
    ("headless Service hides not-ready pods", check_headless_service,
     lambda m: _service(m, "squall-peers")["spec"].update(publishNotReadyAddresses=False)),
    ("selector off the pod labels", check_selectors,
     lambda m: _sts(m)["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/component": "other"})),
    ("Service selector matches nothing", check_selectors,
     lambda m: _service(m, "squall")["spec"]["selector"].update({"app.kubernetes.io/name": "squal"})),
    ("PDB selector matches nothing", check_selectors,
     lambda m: m.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/instance": "x"})),
    ("object in another namespace", check_namespaces, lambda m: m.one("PodDisruptionBudget")["metadata"].update(namespace="default")),
    ("one replica more than peers", check_peers, lambda m: _sts(m)["spec"].update(replicas=4)),
    ("peer host in another namespace", check_peers,
     lambda m: _edit_config(m, lambda t: t.replace("squall-2.squall-peers.squall.svc", "squall-2.squall-peers.default.svc"))),
    ("peer client port not the client port", check_peers,
     lambda m: _edit_config(m, lambda t: t.replace("svc.cluster.local:7100", "svc.cluster.local:7200", 1))),
    ("config listens on another client port", check_ports,
     lambda m: _edit_config(m, lambda t: t.replace('client_addr = "0.0.0.0:7100"', 'client_addr = "0.0.0.0:7200"'))),
    ("config listens on loopback", check_ports,
     lambda m: _edit_config(m, lambda t: t.replace('http_addr = "0.0.0.0:7300"', 'http_addr = "127.0.0.1:7300"'))),
    ("Service targets an undeclared port", check_ports,
     lambda m: _service(m, "squall")["spec"]["ports"][0].update(targetPort="clients")),
    ("headless Service without the peer port", check_ports,
     lambda m: _service(m, "squall-peers")["spec"].update(ports=_service(m, "squall-peers")["spec"]["ports"][1:])),
    ("OrderedReady pods", check_statefulset_policy, lambda m: _sts(m)["spec"].update(podManagementPolicy="OrderedReady")),
    ("writable root filesystem", check_statefulset_policy,
     lambda m: _container(m)["securityContext"].update(readOnlyRootFilesystem=False)),
    ("PDB allows two down", check_disruption_budget, lambda m: m.one("PodDisruptionBudget")["spec"].update(maxUnavailable=2)),
    ("layout needing every node", check_disruption_budget,
     lambda m: _edit_config(m, lambda t: t.replace("min_nodes = 2", "min_nodes = 3", 1))),
]


@pytest.mark.parametrize("what,check,mutate", K8S_MUTATIONS, ids=[m[0] for m in K8S_MUTATIONS])
def test_check_can_fail(what: str, check: Callable, mutate: Callable, manifests: Manifests) -> None:
    broken = copy.deepcopy(manifests)
    mutate(broken)
    assert check(broken) != [], f"{check.__name__} did not notice: {what}"


CONFIG_MUTATIONS: list[tuple[str, str, str]] = [
    ("unknown field", 'data_dir = "', 'data_dri = "'),
    ("node id not a peer", "[node]\nid = 0", "[node]\nid = 7"),
    ("bad subgroup kind", 'kind = "persistent"\nshards', 'kind = "durable"\nshards'),
    ("too few nodes for the layout", "min_nodes = 2", "min_nodes = 4"),
    ("peer address without port", ':7000"\nclient_addr', '"\nclient_addr'),
]


@pytest.mark.parametrize("what,old,new", CONFIG_MUTATIONS, ids=[m[0] for m in CONFIG_MUTATIONS])
def test_config_check_can_fail(what: str, old: str, new: str) -> None:
    text = config_files()["systemd/squall.toml"]
    assert old in text, f"mutation {what!r} no longer applies to systemd/squall.toml"
    assert check_node_config(tomllib.loads(text.replace(old, new, 1))) != [], what


def test_wan_config_check_can_fail() -> None:
    edge = tomllib.loads((EDGE_CLOUD / "edge.toml").read_text(encoding="utf-8"))
    for what, mutate in [
        ("site name with capitals", lambda c: c["site"].update(name="Edge-1")),
        ("batch over the dedup window", lambda c: c["wan"].update(batch_max=1000)),
        ("remote named like this site", lambda c: c["remotes"][0].update(name=c["site"]["name"])),
        ("no persistent subgroup for the outbox", lambda c: c["layout"]["subgroups"].pop(0)),
        ("unknown outbox policy", lambda c: c["wan"].update(outbox_full="drop")),
    ]:
        broken = copy.deepcopy(edge)
        mutate(broken)
        assert check_node_config(broken) != [], what


def test_edge_cloud_check_can_fail() -> None:
    example = load_edge_cloud()
    for what, mutate in [
        ("remote destination to an unknown site", lambda e: e.edge_dfgs[0]["graph"][0].update(destinations=[{"sky:/ingest/": "put"}])),
        ("destination pool missing at the cloud", lambda e: e.edge_dfgs[0]["graph"][0].update(destinations=[{"cloud:/inbox/": "put"}])),
        ("vertex without a pool", lambda e: e.cloud_dfgs[0]["graph"][0].update(pathname="/elsewhere/")),
        ("another UDL", lambda e: e.cloud_dfgs[0]["graph"][0].update(user_defined_logic_list=["00000000-0000-0000-0000-000000000000"])),
        ("misaligned lists", lambda e: e.edge_dfgs[0]["graph"][0].update(shard_dispatcher_list=["one", "one"])),
        ("unknown hook", lambda e: e.cloud_dfgs[0]["graph"][0].update(user_defined_logic_hook_list=["always"])),
        ("edge token read-only at the cloud", lambda e: e.cloud["auth"]["tokens"][1].update(role="read")),
        ("edge site kind cloud", lambda e: e.edge["site"].update(kind="cloud")),
    ]:
        broken = copy.deepcopy(example)
        mutate(broken)
        assert check_edge_cloud(broken) != [], what
