"""Deployment files under infra/, checked offline the way their consumers read them.

Ray cluster launcher configs go through Ray's own schema and `validate_config`; the RayJob goes
through the KubeRay CRD's openAPIV3Schema with Kubernetes' extensions and strict field
validation (what `kubectl apply` does by default); the RayJob's entrypoint is dry-run with the
real CLI; the other manifests and the Dockerfiles are checked for the references between files
(Secrets, volumes, Services, version pins) that no schema sees.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import ROOT
from jsonschema import validators
from packaging.requirements import Requirement

INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
DOCKER = INFRA / "docker"
CRDS = K8S / "schemas"  # in-repo copies of ../shared/schemas (a CI clone has no shared/)
LAUNCHER_CONFIGS = [INFRA / "ray" / "cluster-aws.yaml", INFRA / "ray" / "cluster-onprem.yaml"]
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.mlflow"]
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def cases(*pairs: tuple[Callable[[dict], None], str]) -> list[Any]:
    """Parameters (mutation, expected error fragment), named after the mutation."""
    return [pytest.param(mutate, expected, id=mutate.__name__.strip("_"))
            for mutate, expected in pairs]


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict[str, Any]:
    (doc,) = load_docs(path)
    return doc


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


# --- Ray cluster launcher ----------------------------------------------------------------------


def ray_launcher_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_passes_ray_validation(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load_one(path)
    jsonschema.validate(config, ray_launcher_schema())
    # What `ray up` does before it talks to the cloud: merge the provider defaults, validate.
    validate_config(prepare_config(copy.deepcopy(config)))


def _rename_max_workers(c: dict) -> None:
    c["max_worker"] = c.pop("max_workers")


def _string_max_workers(c: dict) -> None:
    c["available_node_types"]["gpu_worker"]["max_workers"] = "4"


def _fractional_gpu(c: dict) -> None:
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


def _string_run_options(c: dict) -> None:
    c["docker"]["run_options"] = "--shm-size=16g"


@pytest.mark.parametrize("mutate, expected", cases(
    (_rename_max_workers, "'max_worker' was unexpected"),
    (_string_max_workers, "'4' is not of type 'integer'"),
    (_fractional_gpu, "0.5 is not of type 'integer'"),
    (_string_run_options, "is not of type 'array'"),
))
def test_launcher_schema_rejects_a_broken_config(mutate: Callable[[dict], None],
                                                 expected: str) -> None:
    config = load_one(INFRA / "ray" / "cluster-aws.yaml")
    mutate(config)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(expected)):
        jsonschema.validate(config, ray_launcher_schema())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_token_comes_from_the_operators_file(path: Path) -> None:
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    config = load_one(path)
    assert "RAY_AUTH_TOKEN=" not in path.read_text(), "a token must never be inlined"
    # `ray get-auth-token --generate` writes the token here on the operator's machine ...
    local_default = "~/" + _get_default_token_path().relative_to(Path.home()).as_posix()
    mounts = {remote: local for remote, local in config["file_mounts"].items()
              if local == local_default}
    assert len(mounts) == 1, config["file_mounts"]
    (remote,) = mounts
    # ... and every `ray start` runs in token mode reading the mounted copy.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert starts, key
        for command in starts:
            assert "RAY_AUTH_MODE=token" in command
            token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+?);", command).group(1)
            assert token_path.replace("$HOME/", "~/") == remote


# --- Kubernetes: KubeRay custom resources ------------------------------------------------------


def _unique_list(validator, list_type, instance, schema) -> Iterator[jsonschema.ValidationError]:
    if not isinstance(instance, list):
        return
    if list_type == "set":
        seen = [json.dumps(item, sort_keys=True) for item in instance]
    elif list_type == "map":
        props = schema.get("items", {}).get("properties", {})
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen = [json.dumps([item.get(k, props.get(k, {}).get("default")) for k in keys])
                for item in instance if isinstance(item, dict)]
    else:
        return
    duplicates = {s for s in seen if seen.count(s) > 1}
    if duplicates:
        yield jsonschema.ValidationError(f"duplicate entries {sorted(duplicates)} in a "
                                         f"list of type {list_type}")


def _nullable_type(validator, types, instance, schema) -> Iterator[jsonschema.ValidationError]:
    if instance is None and schema.get("nullable"):
        return
    yield from validators.Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


def _strict_properties(validator, properties, instance, schema
                       ) -> Iterator[jsonschema.ValidationError]:
    yield from validators.Draft4Validator.VALIDATORS["properties"](
        validator, properties, instance, schema)
    # Structural schemas prune unknown fields; kubectl's default strict field validation
    # turns each into an error instead.
    if (isinstance(instance, dict) and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        for key in instance:
            if key not in properties:
                yield jsonschema.ValidationError(f"unknown field {key!r}")


def _int_or_string(validator, enabled, instance, schema) -> Iterator[jsonschema.ValidationError]:
    ok = isinstance(instance, str) or (isinstance(instance, int) and not isinstance(instance, bool))
    if enabled and not ok:
        yield jsonschema.ValidationError(f"{instance!r} is neither an integer nor a string")


def _cel_rules(validator, rules, instance, schema) -> Iterator[jsonschema.ValidationError]:
    # CEL cannot be evaluated here: a manifest that sets such a field is not vouched for.
    yield jsonschema.ValidationError(
        f"sets a field with CEL rules this offline check cannot evaluate: {rules}")


KubernetesValidator = validators.extend(validators.Draft4Validator, {
    "type": _nullable_type,
    "properties": _strict_properties,
    "x-kubernetes-int-or-string": _int_or_string,
    "x-kubernetes-list-type": _unique_list,
    "x-kubernetes-validations": _cel_rules,
})


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    group, _, version = api_version.rpartition("/")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 40k lines
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.load_all(path.read_text(), Loader=loader):
            spec = crd["spec"]
            if spec["group"] == group and spec["names"]["kind"] == kind:
                for served in spec["versions"]:
                    if served["name"] == version and served["served"]:
                        return served["schema"]["openAPIV3Schema"]
    raise LookupError(f"no CRD in {CRDS} serves {kind} {api_version}")


def k8s_errors(doc: dict[str, Any]) -> list[str]:
    validator = KubernetesValidator(crd_schema(doc["apiVersion"], doc["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def custom_resources() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{path.name}:{doc['kind']}", doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in load_docs(path) if doc["apiVersion"].startswith("ray.io/")]


def rayjob() -> dict[str, Any]:
    (job,) = [doc for _, doc in custom_resources() if doc["kind"] == "RayJob"]
    return job


def test_custom_resources_validate_against_the_kuberay_crds() -> None:
    resources = custom_resources()
    assert "RayJob" in {doc["kind"] for _, doc in resources}
    for name, doc in resources:
        assert k8s_errors(doc) == [], name
        assert DNS1123.match(doc["metadata"]["name"]), name


def _head(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]


def _worker_container(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]


def _set_unknown_field(job: dict) -> None:  # a typo of `resources`
    container = _worker_container(job)
    container["resource"] = container.pop("resources")


def _string_bool(job: dict) -> None:
    job["spec"]["shutdownAfterJobFinishes"] = "yes"


def _string_replicas(job: dict) -> None:
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "1"


def _float_quantity(job: dict) -> None:  # int-or-string: 0.5 is neither
    _worker_container(job)["resources"]["limits"]["cpu"] = 0.5


def _duplicate_port(job: dict) -> None:  # list-map keyed by (containerPort, protocol)
    ports = _head(job)["containers"][0]["ports"]
    ports.append({"containerPort": ports[0]["containerPort"], "name": "again"})


def _bad_auth_mode(job: dict) -> None:
    job["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "tokens"


def _missing_container_name(job: dict) -> None:
    del _head(job)["containers"][0]["name"]


def _cel_guarded_field(job: dict) -> None:
    job["spec"]["deletionStrategy"] = {"onSuccess": {"policy": "DeleteCluster"}}


@pytest.mark.parametrize("mutate, expected", cases(
    (_set_unknown_field, "containers.0: unknown field 'resource'"),
    (_string_bool, "shutdownAfterJobFinishes: 'yes' is not of type 'boolean'"),
    (_string_replicas, "replicas: '1' is not of type 'integer'"),
    (_float_quantity, "limits.cpu: 0.5 is neither an integer nor a string"),
    (_duplicate_port, "ports: duplicate entries"),
    (_bad_auth_mode, "authOptions.mode: 'tokens' is not one of"),
    (_missing_container_name, "'name' is a required property"),
    (_cel_guarded_field, "deletionStrategy: sets a field with CEL rules"),
))
def test_crd_validation_rejects_a_broken_rayjob(mutate: Callable[[dict], None],
                                               expected: str) -> None:
    job = copy.deepcopy(rayjob())
    mutate(job)
    errors = k8s_errors(job)
    assert any(expected in e for e in errors), errors


def image_workdir() -> str:
    (workdir,) = [arg for instr, arg in final_stage(DOCKER / "Dockerfile") if instr == "WORKDIR"]
    return workdir


def entrypoint_config(argv: list[str]) -> Path:
    """The repository file behind the entrypoint's config path (a path in the image)."""
    config = argv[2]
    if config.startswith("/"):
        assert config.startswith(image_workdir() + "/"), config
        config = config[len(image_workdir()) + 1:]
    return Path(config)


def entrypoint_overrides(argv: list[str]) -> dict[str, Any]:
    overrides = {}
    for flag, value in zip(argv[3::2], argv[4::2], strict=True):
        assert flag in ("--set", "-s"), argv
        key, _, raw = value.partition("=")
        overrides[key] = yaml.safe_load(raw)
    return overrides


def test_rayjob_entrypoint_dry_runs_with_the_real_cli() -> None:
    argv = shlex.split(rayjob()["spec"]["entrypoint"])
    assert argv[:2] == ["tsearch", "search"]
    config = entrypoint_config(argv)
    assert (ROOT / config).is_file()
    copied = {src for src, _ in dockerfile_copies(DOCKER / "Dockerfile")}
    assert config.parts[0] in copied, "the config file is not in the image"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "RAY_", "TSEARCH_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "tsearch.cli.main", "search", str(config), *argv[3:], "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    for dotted, value in entrypoint_overrides(argv).items():
        node = resolved
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


def pod_specs(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


def test_rayjob_pods_get_the_token_secret_gpus_and_shared_storage() -> None:
    job = rayjob()
    (secret,) = load_docs(K8S / "secret.example.yaml")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    auth = job["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"] == secret["metadata"]["name"]
    assert "auth_token" in secret_keys  # the key KubeRay reads from authOptions.secretName

    pods = pod_specs(job) | {"submitter": job["spec"]["submitterPodTemplate"]["spec"]}
    for name, pod in pods.items():
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", name
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret_keys, name

    (pvc,) = load_docs(K8S / "shared-pvc.yaml")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    overrides = entrypoint_overrides(shlex.split(job["spec"]["entrypoint"]))
    storage = Path(overrides["search.storage_path"])
    gpu_groups = 0
    for name, pod in pod_specs(job).items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", name
        # Trial checkpoints land on the shared RWX claim on every Ray node.
        shared = [v for path, v in mounts.items() if storage.is_relative_to(path)]
        assert [v["persistentVolumeClaim"]["claimName"] for v in shared] == [
            pvc["metadata"]["name"]], name
        limits = pod["containers"][0]["resources"]["limits"]
        gpu_groups += int(limits.get("nvidia.com/gpu", 0)) >= 1
    assert gpu_groups >= 1
    head_params = job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert head_params["num-cpus"] == "0"  # trials on workers only
    assert overrides["search.gpus_per_trial"] > 0


def test_rayjob_ray_version_matches_the_image() -> None:
    # KubeRay picks its behaviour (health checks, token auth) by rayVersion; the image's Ray
    # is the one pinned for the Dockerfiles.
    assert rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == constraint_pins()["ray"]


def test_secret_examples_hold_no_real_secret() -> None:
    for path in sorted(K8S.glob("*secret*.yaml")):
        for doc in load_docs(path):
            assert doc["kind"] == "Secret" and "data" not in doc, path.name
            for value in doc["stringData"].values():
                assert not re.fullmatch(r"[0-9a-fA-F]{24,}|[A-Za-z0-9+/=_-]{32,}", value), path


# --- Kubernetes: MLflow ------------------------------------------------------------------------


def mlflow_docs() -> list[dict[str, Any]]:
    return load_docs(K8S / "mlflow.yaml")


def workload(docs: list[dict], name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
              and d["metadata"]["name"] == name]
    return doc


def test_mlflow_manifests_are_well_formed_and_services_reach_pods() -> None:
    docs = mlflow_docs()
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"], doc
        assert DNS1123.match(doc["metadata"]["name"]), doc["metadata"]
        assert "namespace" not in doc["metadata"]  # applied with -n, next to the RayJob
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for w in workloads:
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()
    for svc in [d for d in docs if d["kind"] == "Service"]:
        selector = svc["spec"]["selector"].items()
        targets = [w for w in workloads
                   if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, svc["metadata"]["name"]
        ports = {p["name"]: p["containerPort"]
                 for c in targets[0]["spec"]["template"]["spec"]["containers"]
                 for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), svc["metadata"]["name"]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for w in workloads:
        for volume in w["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


def _server_option(container: dict, option: str, env_name: str) -> str:
    """An `mlflow server` option from the command line, or from the variable it reads."""
    argv = container.get("command", []) + container.get("args", [])
    for i, arg in enumerate(argv):
        if arg == option:
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.partition("=")[2]
    (value,) = [e["value"] for e in container["env"] if e["name"] == env_name]
    return value


def _expandable(container: dict, value: str, before: str | None) -> list[dict]:
    """The env entries a value's $(VAR) references resolve to (Kubernetes expands only
    variables defined earlier in the list than the one using them)."""
    names = [e["name"] for e in container["env"]]
    limit = names.index(before) if before in names else len(names)
    refs = re.findall(r"\$\((\w+)\)", value)
    assert all(ref in names[:limit] for ref in refs), (refs, names[:limit])
    return [container["env"][names.index(ref)] for ref in refs]


def test_mlflow_uses_postgres_with_a_password_from_a_secret() -> None:
    docs = mlflow_docs()
    (server,) = workload(docs, "mlflow")["spec"]["template"]["spec"]["containers"]
    uri = _server_option(server, "--backend-store-uri", "MLFLOW_BACKEND_STORE_URI")
    m = re.fullmatch(r"postgresql://(\w+):\$\(\w+\)@([\w.-]+):(\d+)/(\w+)", uri)
    assert m, f"{uri!r}: not postgresql with the password from an env reference"
    user, host, port, database = m.groups()
    (password,) = _expandable(server, uri, before="MLFLOW_BACKEND_STORE_URI")
    ref = password["valueFrom"]["secretKeyRef"]
    (secret,) = load_docs(K8S / "postgres-secret.example.yaml")
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # The URI points at the database Service, whose pods were initialised with the same
    # user, database and secret.
    (svc,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host]
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    database_pod = [w for w in docs if w["kind"] in ("Deployment", "StatefulSet")
                    and svc["spec"]["selector"].items()
                    <= w["spec"]["template"]["metadata"]["labels"].items()]
    (postgres,) = database_pod[0]["spec"]["template"]["spec"]["containers"]
    penv = {e["name"]: e for e in postgres["env"]}
    assert penv["POSTGRES_USER"]["value"] == user and penv["POSTGRES_DB"]["value"] == database
    assert penv["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == ref


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing mlflow.server
def test_mlflow_serves_artifacts_and_accepts_the_rayjobs_host() -> None:
    docs = mlflow_docs()
    pod = workload(docs, "mlflow")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    destination = _server_option(server, "--artifacts-destination", "MLFLOW_ARTIFACTS_DESTINATION")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in server["volumeMounts"]}
    assert "persistentVolumeClaim" in mounted[destination]
    # The RayJob's tracking URI names this Service and port, and passes --allowed-hosts.
    overrides = entrypoint_overrides(shlex.split(rayjob()["spec"]["entrypoint"]))
    m = re.fullmatch(r"http://([\w.-]+):(\d+)", overrides["tracking.uri"])
    assert m, overrides["tracking.uri"]
    host = m.group(1)
    (svc,) = [d for d in docs if d["kind"] == "Service"
              and d["metadata"]["name"] == host.split(".")[0]]
    assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"]}
    allowed = _server_option(server, "--allowed-hosts", "MLFLOW_SERVER_ALLOWED_HOSTS").split(",")
    from mlflow.server.security_utils import is_allowed_host_header

    assert is_allowed_host_header(allowed, f"{host}:{m.group(2)}")
    assert not is_allowed_host_header(allowed, "attacker.example:5000")


def test_mlflow_image_matches_the_tested_mlflow() -> None:
    (base,) = [arg for instr, arg in final_stage(DOCKER / "Dockerfile.mlflow") if instr == "FROM"]
    assert base.rpartition(":v")[2] == constraint_pins()["mlflow"]
    image = workload(mlflow_docs(), "mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.rpartition(":")[2] == constraint_pins()["mlflow"]


# --- Dockerfiles -------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined, comments dropped, ARGs expanded
    in FROM lines."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        instruction, _, rest = (current + line).partition(" ")
        out.append((instruction.upper(), rest.strip()))
        current = ""
    global_args = {}
    for instruction, rest in out:
        if instruction == "FROM":
            break
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            global_args[name] = default
    return [(i, re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], r) if i == "FROM"
             else r) for i, r in out]


def final_stage(path: Path) -> list[tuple[str, str]]:
    instructions = dockerfile_instructions(path)
    last_from = max(i for i, (instr, _) in enumerate(instructions) if instr == "FROM")
    return instructions[last_from:]


def dockerfile_copies(path: Path) -> list[tuple[str, str]]:
    """(source, destination) of every COPY/ADD from the build context."""
    copies = []
    for instruction, rest in dockerfile_instructions(path):
        if instruction in ("COPY", "ADD"):
            parts = shlex.split(rest)
            if any(p.startswith("--from") for p in parts):
                continue
            paths = [p for p in parts if not p.startswith("--")]
            copies += [(src, paths[-1]) for src in paths[:-1]]
    return copies


def _ignore_match(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return True  # a matched directory excludes everything under it
    if pattern[0] == "**":
        return any(_ignore_match(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], pattern[0]) and _ignore_match(
        pattern[1:], path[1:])


def dockerignored(path: str) -> bool:
    """Whether Docker leaves `path` out of the build context (.dockerignore, no `!` rules)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled here"
    return any(_ignore_match(p.strip("/").split("/"), list(Path(path).parts)) for p in patterns)


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_exist_and_final_user_is_not_root(path: Path) -> None:
    for src, _ in dockerfile_copies(path):  # the build context is the repository root
        assert (ROOT / src).exists(), f"{path.name}: COPY {src} does not exist"
        assert not dockerignored(src), f"{path.name}: COPY {src} is excluded by .dockerignore"
    stage = final_stage(path)
    (base,) = [arg for instr, arg in stage if instr == "FROM"]
    tag = base.partition(" ")[0].rpartition(":")[2]
    assert re.search(r"\d+\.\d+", tag) and "latest" not in tag, f"{base}: not an exact tag"
    users = [arg for instr, arg in stage if instr == "USER"]
    assert users, f"{path.name}: the final stage runs as root"
    assert users[-1].partition(":")[0] not in ("root", "0"), users[-1]


def test_dockerignore_keeps_local_state_out() -> None:
    for local in (".venv/bin/python", ".git/config", "tsearch-runs/mlflow.db",
                  "tsearch/__pycache__/x.pyc", "benchmarks/results/x.json"):
        assert dockerignored(local), local
    for needed in ("tsearch/cli/main.py", "experiments/quickstart.yaml", "pyproject.toml"):
        assert not dockerignored(needed), needed


@pytest.mark.parametrize("path", DOCKERFILES[:2], ids=lambda p: p.name)
def test_dockerfile_torch_pins_match_pyproject(path: Path) -> None:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    caps = {}
    for dep in map(Requirement, deps):
        upper = [s.version for s in dep.specifier if s.operator in ("<=", "==")]
        if dep.name in ("torch", "torchvision"):
            caps[dep.name] = upper[0]
    text = " ".join(rest for instr, rest in dockerfile_instructions(path) if instr == "RUN")
    pins = dict(re.findall(r"\b(torch|torchvision)==([\w.+]+)", text))
    assert pins == caps
