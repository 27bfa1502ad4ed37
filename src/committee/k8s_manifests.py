"""The Kubernetes manifests of one job, as plain dicts: pure, no I/O beyond reading template files.

A template, `<templates_dir>/<project_type>/test-pod.yaml`, declares what differs between project
types: the test container (image, working directory, environment, resources, how to run a shell
command) and, in an optional second YAML document, the egress its pods need. committee adds what
must be the same everywhere, so that a custom template can neither break the result protocol nor
weaken isolation: the pod's name, labels and deadline; the `fetch` init container that checks out
exactly one commit; the `collect` container that hands back the JUnit files; the shared volumes;
and the `restricted` pod security settings, which override whatever the template says.

Placeholders (`${IMAGE}`, `${COMMIT}`, `${COMMAND}`, `${PROJECT_TYPE}`, `${RESOURCES}`, `${LABELS}`)
are substituted after the YAML is parsed, into values only: a command full of quotes, newlines or
YAML syntax can never change a manifest's structure. Other `${...}` (shell variables) are left
alone. The command is escaped for Kubernetes' own `$(VAR)` expansion, so the shell receives it
exactly as the user wrote it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import gzip
import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from committee import __version__
from committee.errors import BadInput, ExecutorError, UnknownProjectType
from committee.executors import JUNIT_ENV, Job, Limits

Manifest = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
COMMITTEE = "committee"
LAST_USED = "committee/last-used"
EXPIRES_AT = "committee/expires-at"
PROJECT_TYPE_LABEL = "committee/project-type"
NETWORK_LABEL = "committee/network"
TEMPLATES_DIR_ENV = "COMMITTEE_TEMPLATES_DIR"
IMAGE_PREFIX_ENV = "COMMITTEE_K8S_IMAGE_PREFIX"
GIT_SECRET_ENV = "COMMITTEE_K8S_GIT_SECRET"
GIT_SECRET_NAME = "committee-git-credentials"
GIT_SECRET_KEY = ".git-credentials"

TEST_CONTAINER = "test"
FETCH_CONTAINER = "fetch"
COLLECT_CONTAINER = "collect"
WORKSPACE = "/workspace"
RESULTS = "/committee/results"
DONE_MARKER = f"{RESULTS}/.done"
JUNIT_FILE = f"{RESULTS}/junit.xml"
GIT_DIR = "/committee/git"
RUN_AS = 10001  # the uid every committee image creates; numeric so runAsNonRoot can be verified

JUNIT_BEGIN = "committee-junit-begin"
JUNIT_END = "committee-junit-end"
JUNIT_DONE = "committee-junit-done"
JUNIT_MAX_FILES = 50
JUNIT_MAX_BYTES = 20 << 20

_TEMPLATE_FILE = "test-pod.yaml"
_PROJECT_TYPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PLACEHOLDER = re.compile(r"\$\{(IMAGE|COMMIT|COMMAND|PROJECT_TYPE|RESOURCES|LABELS)\}")
_PLAIN_ID = re.compile(r"^(-?[0-9]+|[a-z0-9]+)$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

# The test container runs the template's command as arguments of this script, so the done-marker
# is written however the template chose to invoke its shell; the command is never re-parsed.
WRAPPER_SCRIPT = f'"$@"; status=$?; touch {DONE_MARKER}; exit "$status"'

# Fetch exactly one commit, shallowly: no full clone per commit (see docs/kubernetes.md). Repository
# and commit arrive as environment variables, so they are data to the shell, never code.
FETCH_SCRIPT = f"""set -eu
git init -q {WORKSPACE}/src
cd {WORKSPACE}/src
git remote add origin "$COMMITTEE_REPO_URL"
helper=""
if [ -n "${{COMMITTEE_GIT_CREDENTIALS:-}}" ]; then
  helper="store --file=$COMMITTEE_GIT_CREDENTIALS"
fi
git -c credential.helper="$helper" fetch -q --depth 1 --no-tags origin "$COMMITTEE_COMMIT"
git -c advice.detachedHead=false checkout -q FETCH_HEAD
echo "checked out $(git rev-parse HEAD)"
"""

# Wait for the test container's done-marker, then print each JUnit file (committee's own, and
# junit*.xml / TEST-*.xml the command wrote into the checkout, as the local executor collects) as
# base64 of gzip between marker lines: the executor reads this container's log before the pod goes.
COLLECT_SCRIPT = f"""while [ ! -e {DONE_MARKER} ]; do sleep 0.5; done
{{ ls -1 {RESULTS}/*.xml 2>/dev/null
  find {WORKSPACE}/src \\( -name .git -o -name node_modules -o -name .venv \\
    -o -name __pycache__ \\) -prune -o -type f \\( -name 'junit*.xml' -o -name 'TEST-*.xml' \\) \\
    -newer {WORKSPACE}/src/.git/index -print 2>/dev/null
}} | head -n {JUNIT_MAX_FILES} | while IFS= read -r f; do
  [ -f "$f" ] && [ "$(wc -c < "$f")" -le {JUNIT_MAX_BYTES} ] || continue
  echo "{JUNIT_BEGIN} ${{f##*/}}"
  gzip -c "$f" | base64
  echo "{JUNIT_END}"
done
echo "{JUNIT_DONE}"
"""


@dataclass(frozen=True)
class SessionPolicy:
    """What a session namespace may use in all (ResourceQuota) and per container (LimitRange)."""

    max_pods: int = 8
    cpu: str = "8"
    memory: str = "16Gi"
    container_max_cpu: str = "4"
    container_max_memory: str = "8Gi"
    container_default_cpu: str = "500m"
    container_default_memory: str = "512Mi"


@dataclass(frozen=True)
class Template:
    project_type: str
    path: Path
    pod: Manifest
    egress: tuple[Manifest, ...]  # NetworkPolicy egress rules; () means the template needs none


@dataclass(frozen=True)
class PodOptions:
    """Settings of the executor that shape the pod, beyond the job itself."""

    image: str
    git_secret: bool = False  # mount the session's copy of the git credentials Secret
    startup_allowance_s: int = 300  # image pull and fetch also count against activeDeadlineSeconds


# ---------------------------------------------------------------- names


def default_templates_dir() -> Path:
    configured = os.environ.get(TEMPLATES_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "deployments" / "templates"


def default_image(project_type: str, prefix: str | None = None) -> str:
    """`committee-<type>:<version>`, after `prefix` (default: $COMMITTEE_K8S_IMAGE_PREFIX, e.g.
    "registry.example.com/team/")."""
    if prefix is None:
        prefix = os.environ.get(IMAGE_PREFIX_ENV, "")
    return f"{prefix}committee-{project_type}:{__version__}"


def pod_name(job_id: str) -> str:
    return f"committee-{job_id}"


def namespace_name(user_id: str, chat_id: str) -> str:
    """`im-chat-<chat>-user-<user>` as the original design had it, when that is unambiguous and a
    valid DNS label; otherwise a sanitised form with a hash of both ids, so two sessions can never
    share a namespace."""
    plain = f"im-chat-{chat_id}-user-{user_id}"
    if _PLAIN_ID.match(chat_id) and _PLAIN_ID.match(user_id) and _DNS_LABEL.match(plain):
        return plain
    digest = hashlib.sha256(f"{user_id}\0{chat_id}".encode()).hexdigest()[:10]
    chat, user = _sanitise(chat_id)[:16], _sanitise(user_id)[:16]
    return re.sub(r"-+", "-", f"im-chat-{chat}-user-{user}")[:52].strip("-") + f"-{digest}"


def label_value(text: str) -> str:
    """A valid label value (≤ 63 characters, alphanumeric at both ends) that reads like `text`."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def _sanitise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def literal(text: str) -> str:
    """Kubernetes expands `$(VAR)` in commands, args and env values; `$$` is its escape for `$`."""
    return text.replace("$", "$$")


def rfc3339(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def check_repo_url(url: str) -> None:
    """A pod fetches the commit itself, so the repository must be reachable by URL, and the URL
    must not carry a password: it would be visible in the pod spec."""
    if re.match(r"^[\w.-]+@[\w.-]+:", url):  # scp-like ssh: git@host:owner/repo
        return
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http", "ssh", "git") or not parts.hostname:
        raise BadInput(
            f"the Kubernetes executor fetches commits inside the cluster, so it needs a repository "
            f"URL (https://, ssh:// or git://), not {url!r}"
        )
    if parts.password:
        raise BadInput(
            "the repository URL contains a password; put the credentials in the git credentials "
            "Secret instead (see docs/kubernetes.md)"
        )


# ---------------------------------------------------------------- templates


def available_templates(templates_dir: Path) -> list[str]:
    if not templates_dir.is_dir():
        return []
    return sorted(p.parent.name for p in templates_dir.glob(f"*/{_TEMPLATE_FILE}"))


def load_template(templates_dir: Path, project_type: str) -> Template:
    path = templates_dir / project_type / _TEMPLATE_FILE
    if not _PROJECT_TYPE.match(project_type) or not path.is_file():
        available = ", ".join(available_templates(templates_dir)) or "none"
        raise UnknownProjectType(
            f"Missing deployment template for project type {project_type!r} "
            f"(looked for {path}); available templates: {available}"
        )
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise ExecutorError(f"template {path} is not valid YAML: {exc}") from exc
    return _template_from(project_type, path, documents)


def _template_from(project_type: str, path: Path, documents: list[Any]) -> Template:
    pods = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Pod"]
    policies = [d for d in documents if isinstance(d, dict) and d.get("kind") == "NetworkPolicy"]
    if len(pods) != 1 or len(policies) > 1 or len(pods) + len(policies) != len(documents):
        raise ExecutorError(f"template {path} must hold one Pod and at most one NetworkPolicy")
    containers = pods[0].get("spec", {}).get("containers")
    if not isinstance(containers, list) or not containers:
        raise ExecutorError(f"template {path} declares no containers")
    egress = policies[0].get("spec", {}).get("egress", []) if policies else []
    return Template(project_type, path, pods[0], tuple(egress))


def substitute(node: Any, values: Mapping[str, Any]) -> Any:
    """Replace placeholders in string values; a value that is only a placeholder takes the
    placeholder's value whole (so `${LABELS}` can become a mapping)."""
    if isinstance(node, dict):
        return {key: substitute(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute(item, values) for item in node]
    if not isinstance(node, str):
        return node
    whole = _PLACEHOLDER.fullmatch(node)
    if whole:
        return copy.deepcopy(values[whole.group(1)])
    return _PLACEHOLDER.sub(lambda m: _as_text(m.group(1), values[m.group(1)]), node)


def _as_text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ExecutorError(f"placeholder ${{{name}}} must be a whole value, not part of a string")
    return value


# ---------------------------------------------------------------- the session namespace


def session_manifests(
    namespace: str,
    user_id: str,
    chat_id: str,
    template: Template,
    policy: SessionPolicy,
    now: float,
) -> list[Manifest]:
    """Namespace, quota, limit range and network policies, in the order they must be applied."""
    return [
        _namespace(namespace, user_id, chat_id, now),
        _quota(namespace, policy),
        _limit_range(namespace, policy),
        _deny_all(namespace),
        _open_egress(namespace),
        _template_egress(namespace, template),
    ]


def _meta(name: str, namespace: str | None = None, **labels: str) -> Manifest:
    meta: Manifest = {"name": name, "labels": {MANAGED_BY: COMMITTEE, **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _namespace(name: str, user_id: str, chat_id: str, now: float) -> Manifest:
    labels = {
        "committee/user": label_value(user_id),
        "committee/chat": label_value(chat_id),
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    meta = _meta(name, None, **labels)
    meta["annotations"] = {
        LAST_USED: rfc3339(now),
        "committee/user-id": user_id,
        "committee/chat-id": chat_id,
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _quota(namespace: str, policy: SessionPolicy) -> Manifest:
    hard = {
        "pods": str(policy.max_pods),
        "requests.cpu": policy.cpu,
        "limits.cpu": policy.cpu,
        "requests.memory": policy.memory,
        "limits.memory": policy.memory,
    }
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": _meta("committee-quota", namespace),
        "spec": {"hard": hard},
    }


def _limit_range(namespace: str, policy: SessionPolicy) -> Manifest:
    limit = {
        "type": "Container",
        "default": {"cpu": policy.container_default_cpu, "memory": policy.container_default_memory},
        "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
        "max": {"cpu": policy.container_max_cpu, "memory": policy.container_max_memory},
    }
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": _meta("committee-limits", namespace),
        "spec": {"limits": [limit]},
    }


def _network_policy(name: str, namespace: str, selector: Manifest, spec: Manifest) -> Manifest:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(name, namespace),
        "spec": {"podSelector": selector, **spec},
    }


def _deny_all(namespace: str) -> Manifest:
    # No rules: every pod of the namespace gets no ingress and no egress but what others allow.
    spec = {"policyTypes": ["Ingress", "Egress"]}
    return _network_policy("committee-deny-all", namespace, {}, spec)


def _open_egress(namespace: str) -> Manifest:
    # Only pods of jobs that asked for the network (`network: true`) carry this label.
    selector = {"matchLabels": {NETWORK_LABEL: "open"}}
    spec = {"policyTypes": ["Egress"], "egress": [{}]}
    return _network_policy("committee-egress-open", namespace, selector, spec)


def _template_egress(namespace: str, template: Template) -> Manifest:
    selector = {"matchLabels": {PROJECT_TYPE_LABEL: template.project_type}}
    spec = {"policyTypes": ["Egress"], "egress": copy.deepcopy(list(template.egress))}
    name = f"committee-egress-{template.project_type}"[:63]
    return _network_policy(name, namespace, selector, spec)


# ---------------------------------------------------------------- the pod


def pod_labels(job: Job) -> dict[str, str]:
    labels = {
        MANAGED_BY: COMMITTEE,
        "committee/run-id": label_value(job.run_id),
        "committee/job-id": label_value(job.job_id),
        "committee/commit": label_value(job.commit[:40]),
        "committee/user": label_value(job.user_id),
        PROJECT_TYPE_LABEL: job.project_type,
    }
    if job.network:
        labels[NETWORK_LABEL] = "open"
    return labels


def resources(limits: Limits) -> Manifest:
    """Requests equal limits: the Guaranteed QoS class is the last to be evicted under pressure.
    (Kubernetes has no per-pod process limit; `limits.pids` is left to the kubelet's setting.)"""
    amount = {"cpu": f"{max(1, round(limits.cpus * 1000))}m", "memory": _mebibytes(limits)}
    return {"requests": dict(amount), "limits": dict(amount)}


def _mebibytes(limits: Limits) -> str:
    return f"{max(1, math.ceil(limits.memory_bytes / (1 << 20)))}Mi"


def pod_manifest(job: Job, template: Template, namespace: str, options: PodOptions) -> Manifest:
    values = {
        "IMAGE": options.image,
        "COMMIT": job.commit,
        "COMMAND": literal(job.command),
        "PROJECT_TYPE": job.project_type,
        "RESOURCES": resources(job.limits),
        "LABELS": pod_labels(job),
    }
    pod: Manifest = substitute(copy.deepcopy(template.pod), values)
    metadata = pod.setdefault("metadata", {})
    metadata.update(name=pod_name(job.job_id), namespace=namespace)
    metadata["labels"] = {**(metadata.get("labels") or {}), **pod_labels(job)}
    _complete_spec(pod["spec"], job, template, options)
    return pod


def _complete_spec(spec: Manifest, job: Job, template: Template, options: PodOptions) -> None:
    test = _test_container(spec, template)
    _wrap_test_container(test, job)
    pull = test.get("imagePullPolicy", "IfNotPresent")
    spec["initContainers"] = [_fetch(job, options, pull), *spec.get("initContainers", [])]
    spec["containers"].append(_collect(options, pull))
    spec["volumes"] = [*spec.get("volumes", []), *_volumes(options)]
    spec.update(
        restartPolicy="Never",
        activeDeadlineSeconds=math.ceil(job.timeout_s) + options.startup_allowance_s,
        automountServiceAccountToken=False,
        enableServiceLinks=False,
        terminationGracePeriodSeconds=5,
    )
    _restrict(spec)


def _test_container(spec: Manifest, template: Template) -> Manifest:
    containers: list[Manifest] = spec["containers"]
    named = [c for c in containers if c.get("name") == TEST_CONTAINER]
    if not named:
        raise ExecutorError(f"template {template.path} has no container named {TEST_CONTAINER!r}")
    if not named[0].get("command"):
        raise ExecutorError(
            f"template {template.path}: the test container needs a command, "
            'e.g. command: ["/bin/sh", "-c", "${COMMAND}"]'
        )
    return named[0]


def _wrap_test_container(test: Manifest, job: Job) -> None:
    original = [*test["command"], *test.pop("args", [])]
    test["command"] = ["/bin/sh", "-c", literal(WRAPPER_SCRIPT), "committee-test", *original]
    test.setdefault("resources", resources(job.limits))
    env = [
        e
        for e in test.get("env", [])
        if e.get("name") not in job.env and e.get("name") != JUNIT_ENV
    ]
    env += [{"name": k, "value": literal(v)} for k, v in job.env.items() if k != JUNIT_ENV]
    test["env"] = [*env, {"name": JUNIT_ENV, "value": JUNIT_FILE}]
    test["volumeMounts"] = [
        *test.get("volumeMounts", []),
        {"name": "committee-workspace", "mountPath": WORKSPACE},
        {"name": "committee-results", "mountPath": RESULTS},
    ]


def _fetch(job: Job, options: PodOptions, pull: str) -> Manifest:
    env = [
        {"name": "COMMITTEE_REPO_URL", "value": literal(job.repo_url)},
        {"name": "COMMITTEE_COMMIT", "value": literal(job.commit)},
        {"name": "GIT_TERMINAL_PROMPT", "value": "0"},
    ]
    mounts: list[Manifest] = [{"name": "committee-workspace", "mountPath": WORKSPACE}]
    if options.git_secret:
        env.append({"name": "COMMITTEE_GIT_CREDENTIALS", "value": f"{GIT_DIR}/{GIT_SECRET_KEY}"})
        mounts.append({"name": "committee-git", "mountPath": GIT_DIR, "readOnly": True})
    return {
        "name": FETCH_CONTAINER,
        "image": options.image,
        "imagePullPolicy": pull,
        "command": ["/bin/sh", "-c", literal(FETCH_SCRIPT)],
        "env": env,
        "volumeMounts": mounts,
        "resources": _small("500m", "256Mi"),
    }


def _collect(options: PodOptions, pull: str) -> Manifest:
    return {
        "name": COLLECT_CONTAINER,
        "image": options.image,
        "imagePullPolicy": pull,
        "command": ["/bin/sh", "-c", literal(COLLECT_SCRIPT)],
        "volumeMounts": [
            {"name": "committee-results", "mountPath": RESULTS, "readOnly": True},
            {"name": "committee-workspace", "mountPath": WORKSPACE, "readOnly": True},
        ],
        "resources": _small("50m", "32Mi"),
    }


def _small(cpu: str, memory: str) -> Manifest:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


def _volumes(options: PodOptions) -> list[Manifest]:
    volumes: list[Manifest] = [
        {"name": "committee-workspace", "emptyDir": {}},
        {"name": "committee-results", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if options.git_secret:
        secret = {"secretName": GIT_SECRET_NAME, "defaultMode": 0o440}
        volumes.append({"name": "committee-git", "secret": secret})
    return volumes


def _restrict(spec: Manifest) -> None:
    """The `restricted` Pod Security Standard, enforced whatever the template says."""
    spec["securityContext"] = {
        **spec.get("securityContext", {}),
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        spec.pop(key, None)
    for container in [*spec["initContainers"], *spec["containers"]]:
        context = container.get("securityContext", {})
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": context.get("readOnlyRootFilesystem") is not False,
        }


# ---------------------------------------------------------------- everything at once


def render(
    job: Job,
    template: Template,
    options: PodOptions,
    policy: SessionPolicy,
    now: float,
) -> list[Manifest]:
    """Exactly what the executor applies for `job`, in order: the session's objects, then the pod.
    (A copy of the git credentials Secret, when configured, is applied too but never rendered.)"""
    namespace = namespace_name(job.user_id, job.chat_id)
    session = session_manifests(namespace, job.user_id, job.chat_id, template, policy, now)
    return [*session, pod_manifest(job, template, namespace, options)]


# ---------------------------------------------------------------- reading results back


def parse_collected(log: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The JUnit files in the collect container's log, and what went wrong reading them."""
    files: list[str] = []
    problems: list[str] = []
    chunk: list[str] | None = None
    lines = log.splitlines()
    for line in lines:
        if line.startswith(JUNIT_BEGIN):
            chunk, name = [], line.removeprefix(JUNIT_BEGIN).strip()
        elif line == JUNIT_END and chunk is not None:
            text = _decode_junit(chunk)
            if text is None:
                problems.append(f"the JUnit file {name} could not be decoded")
            else:
                files.append(text)
            chunk = None
        elif chunk is not None:
            chunk.append(line)
    if JUNIT_DONE not in lines:
        problems.append("the JUnit collection did not finish: results may be missing")
    return tuple(files), tuple(problems)


def _decode_junit(chunk: list[str]) -> str | None:
    try:
        return gzip.decompress(base64.b64decode("".join(chunk), validate=True)).decode(
            "utf-8", errors="replace"
        )
    except (binascii.Error, OSError, EOFError):
        return None
