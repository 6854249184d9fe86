"""deploy/kubernetes/, checked offline (no cluster): every overlay renders with `kubectl
kustomize`, Kubernetes' kinds validate with `kubernetes-validate --strict`, KEDA's kinds with
jsonschema against the pinned schemas in deploy/kubernetes/schemas/, and a deliberately
broken overlay fails the same check. Plus what the manifests promise: secrets only from
Secrets, GPUs for the GPU workers, probes, bounded pools, workers over HTTP with the token
the API accepts, and the KEDA trigger's query run on a real PostgreSQL.

Under CI=true a missing kubectl or kubernetes-validate fails the tests instead of skipping.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from optuna.trial import TrialState

from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import Store
from tests.conftest import ROOT, _pg_database, free_port

DEPLOY = ROOT / "deploy" / "kubernetes"
SCHEMAS = DEPLOY / "schemas"
OVERLAYS = ("cpu", "gpu")
BIN = Path(sys.executable).parent
KEDA_KINDS = {"ScaledJob": "scaledjob.json", "TriggerAuthentication": "triggerauthentication.json"}
OLDEST_K8S = "1.29.0"  # the oldest Kubernetes KEDA 2.16 supports
SECRET_ENV = re.compile(r"PASSWORD|TOKEN|DATABASE_URL")
# KEDA's postgresql scaler: its trigger metadata and its authentication parameters
PG_METADATA = {"query", "targetQueryValue", "activationTargetQueryValue"}
PG_AUTH = {"host", "port", "userName", "dbName", "sslmode", "password", "connection"}

Doc = dict[str, Any]


def need(found: str | None, what: str) -> str:
    """``found``, or fail under CI (skip elsewhere) when ``what`` is missing."""
    if found:
        return found
    message = f"{what} is not installed"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def kubectl() -> str:
    return need(shutil.which("kubectl"), "kubectl (with its built-in kustomize)")


def validator() -> str:
    path = BIN / "kubernetes-validate"
    return need(str(path) if path.exists() else shutil.which("kubernetes-validate"),
                "kubernetes-validate (pip install -e '.[dev]')")


# --- rendering -------------------------------------------------------------------------------

@dataclass
class Tree:
    """A copy of deploy/kubernetes with fresh random secrets, as a user would have it."""

    root: Path
    password: str
    token: str

    def render(self, overlay: str) -> str:
        proc = subprocess.run([kubectl(), "kustomize", str(self.root / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def overlay(self, name: str, kustomization: str, **files: str) -> str:
        """Write the overlay ``name`` (its kustomization.yaml and other files); its name."""
        folder = self.root / "overlays" / name
        folder.mkdir()
        (folder / "kustomization.yaml").write_text(kustomization)
        for file, text in files.items():
            (folder / file).write_text(text)
        return name


def make_tree(dest: Path) -> Tree:
    """deploy/kubernetes copied to ``dest`` without anyone's own secret files, then the secret
    files the README tells users to create, with random values."""
    shutil.copytree(DEPLOY, dest, ignore=lambda _, names: [
        n for n in names if n.endswith(".env") and not n.endswith(".example.env")])
    tree = Tree(dest, "pw-" + secrets.token_hex(12) + " \"$'x", secrets.token_hex(24))
    (dest / "base" / "secrets" / "database.env").write_text(f"password={tree.password}\n")
    (dest / "base" / "secrets" / "worker.env").write_text(f"token={tree.token}\n")
    return tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return make_tree(tmp_path_factory.mktemp("k8s") / "kubernetes")


@pytest.fixture(scope="module")
def rendered(tree: Tree) -> dict[str, str]:
    """Each overlay's output, and "external": the gpu overlay on an external database."""
    out = {overlay: tree.render(overlay) for overlay in OVERLAYS}
    component = tree.root / "components" / "external-database"
    shutil.copy(component / "external-database.example.env", component / "external-database.env")
    out["external"] = tree.render(tree.overlay(
        "external", "resources: [../gpu]\ncomponents: [../../components/external-database]\n"))
    return out


def docs(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d]


def one(objects: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in objects if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_spec(doc: Doc) -> Doc | None:
    spec = doc.get("spec", {})
    if doc["kind"] == "ScaledJob":
        spec = spec["jobTargetRef"]
    return spec.get("template", {}).get("spec")  # type: ignore[no-any-return]


def containers(doc: Doc) -> list[Doc]:
    pod = pod_spec(doc) or {}
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_data(objects: list[Doc], name: str) -> dict[str, str]:
    secret = one(objects, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


# --- the check: kubernetes-validate for Kubernetes' kinds, jsonschema for KEDA's --------------

def keda_validator(kind: str, k8s_version: str) -> Any:
    """A jsonschema validator of KEDA's ``kind``, resolving Kubernetes' definitions from
    kubernetes-validate's strict schemas of ``k8s_version``."""
    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    definitions = kv.schema_contents(
        f"kubernetes-json-schema/v{k8s_version}-local-strict/_definitions.json", k8s_version)
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    schema = json.loads((SCHEMAS / KEDA_KINDS[kind]).read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def check(text: str, tmp: Path) -> list[str]:
    """Problems of the rendered manifests ``text``: kubernetes-validate --strict on every
    Kubernetes kind (for the oldest Kubernetes KEDA supports and the newest it knows), the
    pinned schemas on KEDA's kinds, and any other kind (one nobody can check) is a problem."""
    tool = validator()
    import kubernetes_validate.utils as kv

    path = tmp / "rendered.yaml"
    path.write_text(text)
    versions = [OLDEST_K8S, kv.latest_version()]
    proc = subprocess.run([tool, "--strict", "--quiet", *[a for v in versions
                                                                  for a in ("-k", v)],
                           str(path)], capture_output=True, text=True, timeout=300)
    problems = [line for line in proc.stdout.splitlines() if line.startswith(("ERROR", "FATAL"))]
    unknown = {m.group(1) for m in re.finditer(r"^WARN .*find schema for kind (\S+)",
                                               proc.stdout, re.M)}
    problems += [f"no schema for kind {kind}" for kind in sorted(unknown - set(KEDA_KINDS))]
    if proc.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited {proc.returncode}: {proc.stderr}")
    for doc in docs(text):
        if doc["kind"] in KEDA_KINDS:
            if doc["apiVersion"] != "keda.sh/v1alpha1":
                problems.append(f"{doc['kind']} {doc['apiVersion']}: not KEDA's v1alpha1")
                continue
            for version in versions:
                for error in keda_validator(doc["kind"], version).iter_errors(doc):
                    where = "/".join(map(str, error.absolute_path))
                    problems.append(f"{doc['kind']}/{doc['metadata']['name']} ({version}): "
                                    f"{where}: {error.message}")
    return problems


@pytest.mark.parametrize("overlay", [*OVERLAYS, "external"])
def test_every_overlay_renders_and_validates(rendered: dict[str, str], overlay: str,
                                             tmp_path: Path) -> None:
    objects = docs(rendered[overlay])
    kinds = {d["kind"] for d in objects}
    assert {"Namespace", "Secret", "ConfigMap", "Deployment", "Service", "Job",
            "HorizontalPodAutoscaler", "ScaledJob", "TriggerAuthentication"} <= kinds
    assert ("StatefulSet" in kinds) == (overlay != "external")
    assert check(rendered[overlay], tmp_path) == []
    assert {d["metadata"].get("namespace") for d in objects if d["kind"] != "Namespace"} \
        == {"lrtune"}


BROKEN = {
    # a typo'd field in a Deployment: kubernetes-validate --strict
    "deployment-typo": ("Deployment", "lrtune-api", "readinesProbe", [
        {"op": "add", "path": "/spec/template/spec/containers/0/readinesProbe",
         "value": {"httpGet": {"path": "/readyz", "port": "http"}}}]),
    # a Deployment's wrong type
    "deployment-type": ("Deployment", "lrtune-dashboard", "replicas", [
        {"op": "replace", "path": "/spec/replicas", "value": "one"}]),
    # KEDA: an unknown field, a number where the CRD wants a string, a missing required field
    "scaledjob-unknown-field": ("ScaledJob", "lrtune-worker", "pollingIntervall", [
        {"op": "add", "path": "/spec/pollingIntervall", "value": 15}]),
    "scaledjob-wrong-type": ("ScaledJob", "lrtune-worker", "targetQueryValue", [
        {"op": "replace", "path": "/spec/triggers/0/metadata/targetQueryValue", "value": 1}]),
    "scaledjob-bad-job-template": ("ScaledJob", "lrtune-worker", "restartPolicyy", [
        {"op": "add", "path": "/spec/jobTargetRef/template/spec/restartPolicyy",
         "value": "Never"}]),
    "triggerauthentication-missing-key": ("TriggerAuthentication", "lrtune-keda-postgres",
                                          "key", [
        {"op": "remove", "path": "/spec/secretTargetRef/0/key"}]),
}


@pytest.mark.parametrize("defect", [*BROKEN, "unknown-kind"])
def test_a_broken_overlay_fails_the_check(tree: Tree, defect: str, tmp_path: Path) -> None:
    if defect == "unknown-kind":  # a kind nobody has a schema for must not pass unchecked
        name = tree.overlay(f"broken-{defect}", "resources: [../gpu, extra.yaml]\n",
                            **{"extra.yaml": "apiVersion: keda.sh/v1alpha1\nkind: ScaledObjekt\n"
                               "metadata: {name: x}\nspec: {}\n"})
        needle = "ScaledObjekt"
    else:
        kind, target, needle, ops = BROKEN[defect]
        name = tree.overlay(f"broken-{defect}", yaml.safe_dump({
            "resources": ["../gpu"],
            "patches": [{"target": {"kind": kind, "name": target}, "patch": json.dumps(ops)}]}))
    problems = check(tree.render(name), tmp_path)
    assert problems, f"{defect} passed the check"
    assert any(needle in p for p in problems), problems


def test_the_repository_holds_no_secret_files_and_the_base_needs_them(tmp_path: Path) -> None:
    listed = subprocess.run(["git", "ls-files", str(DEPLOY)], capture_output=True, text=True,
                            cwd=ROOT, check=True).stdout.split()
    assert not [f for f in listed if f.endswith(".env") and not f.endswith(".example.env")]
    for example in DEPLOY.rglob("*.example.env"):  # the files users make from them: ignored
        mine = example.with_name(example.name.replace(".example.env", ".env"))
        for path, ignored in ((mine, True), (example, False)):
            proc = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
            assert (proc.returncode == 0) == ignored, path
    bare = tmp_path / "kubernetes"
    shutil.copytree(DEPLOY, bare, ignore=lambda _, names: [
        n for n in names if n.endswith(".env") and not n.endswith(".example.env")])
    proc = subprocess.run([kubectl(), "kustomize", str(bare / "overlays" / "gpu")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "database.env" in proc.stderr, proc.stderr


# --- what the manifests promise --------------------------------------------------------------

@pytest.mark.parametrize("overlay", [*OVERLAYS, "external"])
def test_secrets_come_only_from_secret_objects(rendered: dict[str, str], tree: Tree,
                                               overlay: str) -> None:
    objects = docs(rendered[overlay])
    secret_keys = {d["metadata"]["name"]: set(d["data"]) for d in objects if d["kind"] == "Secret"}
    config_maps = {d["metadata"]["name"] for d in objects if d["kind"] == "ConfigMap"}
    checked = 0
    for doc in objects:
        for container in containers(doc):
            for source in container.get("envFrom", []):
                assert "secretRef" in source, (doc["metadata"]["name"], source)
                assert source["secretRef"]["name"] in secret_keys
            for name, var in env(container).items():
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if SECRET_ENV.search(name):
                    assert ref is not None and "value" not in var, (doc["metadata"]["name"], var)
                    checked += 1
                if ref is not None:  # names a Secret, and a key, that exist
                    assert ref["key"] in secret_keys.get(ref["name"], set()), var
                if "value" in var:
                    assert tree.password not in var["value"] and tree.token not in var["value"]
        for volume in (pod_spec(doc) or {}).get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
            assert "secret" not in volume or volume["secret"]["secretName"] in secret_keys
        if doc["kind"] == "TriggerAuthentication":
            for ref in doc["spec"]["secretTargetRef"]:
                assert ref["key"] in secret_keys.get(ref["name"], set()), ref
    assert checked >= 5
    # the secret values themselves appear in the Secrets' data and nowhere else
    for doc in objects:
        text = json.dumps(doc)
        if doc["kind"] == "Secret":
            continue
        for value in (tree.password, tree.token):
            assert value not in text and base64.b64encode(value.encode()).decode() not in text
    assert secret_data(objects, ref_name(objects, "password"))["password"] == tree.password


def ref_name(objects: list[Doc], key: str) -> str:
    """The generated name (hash suffix included) of the Secret holding ``key``."""
    names = [d["metadata"]["name"] for d in objects if d["kind"] == "Secret" and key in d["data"]]
    assert len(names) == 1, names
    return names[0]


def test_gpu_workers_request_a_gpu_and_cpu_workers_none(rendered: dict[str, str]) -> None:
    for overlay in ("gpu", "external"):
        job = one(docs(rendered[overlay]), "ScaledJob", "lrtune-worker")
        pod = pod_spec(job)
        assert pod is not None
        (worker,) = pod["containers"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert worker["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
            in pod["tolerations"]
        assert env(worker)["LRTUNE_DEVICE"]["value"] == "cuda"
        assert worker["image"] == "lrtune-worker:latest-cuda"
        assert job["spec"]["maxReplicaCount"] >= 1
    cpu = docs(rendered["cpu"])
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    (worker,) = containers(one(cpu, "ScaledJob", "lrtune-worker"))
    assert env(worker)["LRTUNE_DEVICE"]["value"] == "cpu"
    assert worker["image"] == "lrtune-worker:latest"
    assert worker["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_resources_pools_and_autoscaler(rendered: dict[str, str],
                                                   overlay: str) -> None:
    objects = docs(rendered[overlay])
    api = one(objects, "Deployment", "lrtune-api")
    assert "replicas" not in api["spec"]  # the autoscaler's
    (container,) = containers(api)
    assert container["command"] == ["lrtune", "serve", "--host", "0.0.0.0", "--port", "8000",
                                    "--workers", "0"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == 8000
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    variables = env(container)
    pool, overflow = (int(variables[v]["value"])
                      for v in ("LRTUNE_DB_POOL_SIZE", "LRTUNE_DB_MAX_OVERFLOW"))
    assert 1 <= pool and 0 <= overflow and 2 * (pool + overflow) <= 32
    # the API's database is PgBouncer's Service, in transaction mode
    ref = variables["LRTUNE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    url = urlsplit(secret_data(objects, ref["name"])[ref["key"]])
    assert url.password is None
    service = one(objects, "Service", url.hostname)
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    pgbouncer = one(objects, "Deployment", "lrtune-pgbouncer")
    assert service["spec"]["selector"].items() <= \
        pgbouncer["spec"]["template"]["metadata"]["labels"].items()
    ini = one(objects, "ConfigMap")["data"]["pgbouncer.ini"]
    settings = dict(re.findall(r"^(\w+) = ?(.*)$", ini, re.M))
    assert settings["pool_mode"] == "transaction"
    assert int(settings["max_client_conn"]) >= 10 * 2 * (pool + overflow)  # maxReplicas 10
    hpa = one(objects, "HorizontalPodAutoscaler", "lrtune-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "lrtune-api"}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] == 10
    dashboard = one(objects, "Deployment", "lrtune-dashboard")
    assert containers(dashboard)[0]["command"] == ["lrtune", "dashboard", "--host", "0.0.0.0",
                                                   "--port", "8080"]
    migrate = one(objects, "Job", "lrtune-migrate")
    assert containers(migrate)[0]["command"] == ["lrtune", "migrate"]


@pytest.mark.parametrize("overlay", [*OVERLAYS, "external"])
def test_workers_go_over_http_with_the_token_the_api_accepts(rendered: dict[str, str],
                                                             overlay: str) -> None:
    objects = docs(rendered[overlay])
    job = one(objects, "ScaledJob", "lrtune-worker")
    (worker,) = containers(job)
    variables = env(worker)
    assert not [v for v in variables if "DATABASE" in v]  # no database credentials
    assert "envFrom" not in worker
    url = urlsplit(variables["LRTUNE_URL"]["value"])
    api = one(objects, "Service", url.hostname)
    assert url.port in {p["port"] for p in api["spec"]["ports"]}
    assert api["spec"]["selector"]["app.kubernetes.io/name"] == "lrtune-api"
    assert worker["command"][:3] == ["lrtune", "worker", "--url"]
    assert "--exit-when-idle" in worker["command"] or "--max-trials" in worker["command"]
    api_env = env(containers(one(objects, "Deployment", "lrtune-api"))[0])
    assert variables["LRTUNE_TOKEN"]["valueFrom"]["secretKeyRef"] == \
        api_env["LRTUNE_WORKER_TOKENS"]["valueFrom"]["secretKeyRef"]
    assert pod_spec(job)["restartPolicy"] == "Never"  # type: ignore[index]
    # KEDA: a ScaledJob (never scales a running worker down), its postgresql trigger
    # authenticated from the database Secret
    assert job["spec"]["rollout"]["strategy"] == "gradual"
    (trigger,) = job["spec"]["triggers"]
    assert trigger["type"] == "postgresql"
    assert set(trigger["metadata"]) <= PG_METADATA and float(trigger["metadata"]
                                                             ["targetQueryValue"]) > 0
    auth = one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    params = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(params) <= PG_AUTH and {"host", "port", "userName", "dbName", "sslmode",
                                       "password"} <= set(params)
    data = secret_data(objects, params["host"]["name"])
    if overlay == "external":
        assert data["host"] == "db.example.internal"
        return
    # the in-cluster PostgreSQL, by a name KEDA's operator resolves from its own namespace
    name, namespace, rest = data["host"].split(".", 2)
    postgres = one(objects, "Service", name)
    assert namespace == postgres["metadata"]["namespace"] and rest == "svc.cluster.local"
    assert int(data["port"]) in {p["port"] for p in postgres["spec"]["ports"]}
    direct = urlsplit(data["url-direct"])
    assert (direct.hostname, direct.port, direct.username, direct.path) == \
        (data["host"], int(data["port"]), data["username"], "/" + data["dbname"])


def lrtune_commands(objects: list[Doc]) -> Iterator[tuple[str, list[str]]]:
    for doc in objects:
        for container in containers(doc):
            command = container.get("command", [])
            if command[:1] == ["lrtune"]:
                values = {n: v.get("value", "") for n, v in env(container).items()}
                yield doc["metadata"]["name"], [expand(a, values) for a in command[1:]]


def expand(arg: str, values: dict[str, str]) -> str:
    """``arg`` with ``$(NAME)`` replaced by the env var's value, as the kubelet does."""
    return re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], arg)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_lrtune_command_parses(rendered: dict[str, str], overlay: str) -> None:
    import typer

    from lrtune.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for _, args in lrtune_commands(docs(rendered[overlay])):
        commands[args[0]].make_context(args[0], args[1:])  # raises a UsageError if wrong


# --- the KEDA trigger's query, on PostgreSQL --------------------------------------------------

@pytest.fixture
def pg_store() -> Iterator[Store]:
    for url in _pg_database():
        store = Store(Settings(database_url=url))  # type: ignore[arg-type]
        try:
            yield store
        finally:
            store.db.engine.dispose()
            store.optuna_storage.engine.dispose()


def test_the_trigger_query_counts_waiting_claims(rendered: dict[str, str],
                                                 pg_store: Store) -> None:
    import psycopg

    (trigger,) = one(docs(rendered["gpu"]), "ScaledJob")["spec"]["triggers"]
    dsn = pg_store.settings.connection_url().replace("postgresql+psycopg://", "postgresql://")

    def waiting() -> Any:
        with psycopg.connect(dsn) as conn:
            (value,) = conn.execute(trigger["metadata"]["query"]).fetchone()  # type: ignore[misc]
            return value

    assert waiting() == 0  # a fresh database
    create: Callable[..., Any] = lambda name, **kw: pg_store.create_study(  # noqa: E731
        StudySpec(name=name, epochs=2, **kw), "me")
    single = create("single", task="digits-mlp", n_trials=10)
    packed = create("packed", task="digits-mlp", n_trials=10, pack=4)  # 3 claims: 4 + 4 + 2
    create("auto", task="digits-mlp", n_trials=5, pack="auto")  # sized by the worker: 1
    create("external", task="external", n_trials=5)  # trained by users' scripts: 0
    pg_store.cancel(create("cancelled", task="digits-mlp", n_trials=5).id)  # 0
    assert waiting() == 10 + 3 + 1
    claims = [pg_store.claim(only={single.id}) for _ in range(4)]
    assert all(claims)
    assert waiting() == 6 + 3 + 1  # RUNNING trials are in workers' hands
    pg_store.finish(claims[0], TrialState.COMPLETE, 0.5)  # type: ignore[arg-type]
    pg_store.finish(claims[1], TrialState.PRUNED, None)  # type: ignore[arg-type]
    pg_store.finish(claims[2], TrialState.FAIL, None)  # type: ignore[arg-type]
    assert waiting() == 7 + 3 + 1  # a failed trial is work again
    assert len(pg_store.claim_pack(only={packed.id})) == 4
    assert waiting() == 7 + 2 + 1


# --- PgBouncer, as the pod runs it ------------------------------------------------------------

def test_pgbouncer_starts_from_its_configmap_and_init_script(rendered: dict[str, str],
                                                             tree: Tree) -> None:
    """The init container's script writes the auth file and [databases] from the Secret's
    values (a password with quotes and spaces), and PgBouncer, with the ConfigMap's
    pgbouncer.ini as the pod mounts it, lets "lrtune" in with that password and no other,
    onto the database and user the Secret names."""
    import psycopg

    binary = need(shutil.which("pgbouncer") or shutil.which("/usr/sbin/pgbouncer"),
                  "pgbouncer (Debian's package)")
    objects = docs(rendered["gpu"])
    deployment = one(objects, "Deployment", "lrtune-pgbouncer")
    pod = pod_spec(deployment)
    assert pod is not None
    (init,), (main,) = pod["initContainers"], pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert main["command"] == ["pgbouncer", mounts["config"]]
    generated = mounts["generated"]
    assert {m["mountPath"] for m in init["volumeMounts"]} == {generated}
    ini = one(objects, "ConfigMap")["data"]["pgbouncer.ini"]
    assert f"%include {generated}/databases.ini" in ini
    assert f"auth_file = {generated}/userlist.txt" in ini
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="lrtune-pgbouncer-"))
    try:
        os.chmod(folder, 0o755)
        (folder / "generated").mkdir()
        ini = (ini.replace(generated, str(folder / "generated"))
               .replace("listen_addr = 0.0.0.0", "listen_addr = 127.0.0.1")  # loopback only
               .replace("listen_port = 6432", f"listen_port = {port}"))
        (folder / "pgbouncer.ini").write_text(ini)
        script = init["command"][2].replace(generated, str(folder / "generated"))
        for url in _pg_database():
            database = urlsplit(url).path.lstrip("/")
            values = {"DB_HOST": "127.0.0.1", "DB_PORT": "5432", "DB_NAME": database,
                      "DB_USER": "postgres", "DB_PASSWORD": tree.password}
            assert set(values) == set(env(init))
            subprocess.run([init["command"][0], "-c", script], env={**os.environ, **values},
                           check=True, timeout=30)
            run_as = []
            if os.geteuid() == 0:  # PgBouncer refuses root: run it as PostgreSQL's user
                for path in folder.rglob("*"):
                    shutil.chown(path, "postgres")
                run_as = ["-u", "postgres"]
            proc = subprocess.Popen([binary, *run_as, str(folder / "pgbouncer.ini")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                def connect(password: str) -> psycopg.Connection[Any]:
                    return psycopg.connect(host="127.0.0.1", port=port, user="lrtune",
                                           password=password, dbname="lrtune",
                                           connect_timeout=5, autocommit=True)

                for _ in range(100):
                    try:
                        conn = connect(tree.password)
                        break
                    except psycopg.OperationalError:
                        assert proc.poll() is None, proc.communicate()[0]
                        time.sleep(0.1)
                else:
                    pytest.fail("PgBouncer did not take a connection")
                with conn:
                    row = conn.execute("SELECT current_user, current_database()").fetchone()
                    assert row == ("postgres", database)
                with pytest.raises(psycopg.OperationalError):
                    connect(tree.password + "x")
            finally:
                proc.terminate()
                proc.wait(timeout=10)
    finally:
        shutil.rmtree(folder)


# --- the README ------------------------------------------------------------------------------

def test_the_readme_walks_from_an_empty_cluster_to_a_finished_study() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on Kubernetes", 1)[1].split("\n## ", 1)[0]
    for needle in ("helm install keda", "kubectl apply -k deploy/kubernetes/overlays/gpu",
                   "port-forward", "token create", "ScaledJob", "ScaledObject", "offline"):
        assert needle in section, needle
    for path in re.findall(r"deploy/kubernetes/[\w./-]+", section):
        if not path.endswith(".env") or path.endswith(".example.env"):
            assert (ROOT / path.rstrip(".")).exists(), path
