"""The manifests of the Kubernetes executor: names, templates, validation against the real
Kubernetes OpenAPI schemas (kubernetes-validate, offline), the restricted pod security settings,
and the in-pod scripts (fetch, wrapper, collect) run for real with sh and git."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

import k8s_fake
from committee import k8s_cli
from committee import k8s_manifests as m
from committee.errors import BadInput, ExecutorError, UnknownProjectType
from committee.executors import JUNIT_ENV, Job, Limits

K8S_VERSION = "1.30"
TEMPLATES = m.default_templates_dir()
SERVER_DIR = Path(__file__).resolve().parents[1] / "deployments" / "server"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
NOW = 1_700_000_000.0


def make_job(**changes: Any) -> Job:
    """A supergroup chat (negative id) and an odd timeout: both must survive rendering."""
    return k8s_fake.make_job(**{"chat_id": "-1001", "timeout_s": 90.5, **changes})


def rendered(job: Job | None = None, *, git_secret: bool = False, **kw: Any) -> list[m.Manifest]:
    job = job or make_job()
    template = m.load_template(kw.pop("templates_dir", TEMPLATES), job.project_type)
    options = m.PodOptions(image="committee-test:1", git_secret=git_secret, **kw)
    return m.render(job, template, options, m.SessionPolicy(), NOW)


def the_pod(manifests: list[m.Manifest]) -> m.Manifest:
    (pod,) = [d for d in manifests if d["kind"] == "Pod"]
    return pod


def container(pod: m.Manifest, name: str) -> m.Manifest:
    spec = pod["spec"]
    (found,) = [c for c in spec["initContainers"] + spec["containers"] if c["name"] == name]
    return found


def write_template(root: Path, name: str, text: str) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "test-pod.yaml").write_text(text)
    return root


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("user", "chat", "expected"),
    [("42", "-1001", "im-chat--1001-user-42"), ("alice", "room7", "im-chat-room7-user-alice")],
)
def test_namespace_keeps_the_original_form_when_it_is_valid(
    user: str, chat: str, expected: str
) -> None:
    assert m.namespace_name(user, chat) == expected


@pytest.mark.parametrize(
    ("user", "chat"),
    [
        ("Alice@Example.com", "chat/1"),
        ("x" * 120, "y" * 120),
        ("ünïcødé", "💬"),
        ("a-user-b", "c"),
        ("--", "__"),
    ],
)
def test_awkward_ids_give_valid_hashed_namespaces(user: str, chat: str) -> None:
    name = m.namespace_name(user, chat)
    assert DNS_LABEL.match(name), name
    assert len(name) <= 63
    assert name.startswith("im-chat-")
    assert re.search(r"-[0-9a-f]{10}$", name)
    assert m.namespace_name(user, chat) == name  # stable


def test_sessions_never_share_a_namespace() -> None:
    pairs = [
        ("a-user-b", "c"),
        ("b", "c-user-a"),
        ("a.b", "c"),
        ("a_b", "c"),
        ("A", "c"),
        ("a", "c"),
        ("x" * 80 + "1", "c"),
        ("x" * 80 + "2", "c"),
    ]
    names = [m.namespace_name(user, chat) for user, chat in pairs]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("text", ["-100123", "Alice Smith", "a" * 100, "@@", "x.y_z", "💬ok💬"])
def test_label_values_are_valid(text: str) -> None:
    value = m.label_value(text)
    assert LABEL_VALUE.match(value) and len(value) <= 63


def test_repo_url_must_be_reachable_from_the_cluster_and_carry_no_password() -> None:
    m.check_repo_url("https://github.com/octocat/Hello-World.git")
    m.check_repo_url("git@github.com:octocat/Hello-World.git")
    m.check_repo_url("ssh://git@example.com/repo.git")
    with pytest.raises(BadInput, match="repository URL"):
        m.check_repo_url("/home/me/repo")
    with pytest.raises(BadInput, match="password"):
        m.check_repo_url("https://me:s3cret@github.com/me/private.git")


# ---------------------------------------------------------------- templates


def test_the_three_project_types_have_a_template_and_a_dockerfile() -> None:
    assert {"fastapi", "python", "node"} <= set(m.available_templates(TEMPLATES))
    for project_type in ("fastapi", "python", "node"):
        dockerfile = (TEMPLATES / project_type / "Dockerfile").read_text()
        assert "git" in dockerfile and "USER 10001" in dockerfile


@pytest.mark.parametrize("project_type", ["cobol", "../server", "Python", ""])
def test_unknown_project_type_lists_the_available_templates(project_type: str) -> None:
    with pytest.raises(UnknownProjectType) as caught:
        m.load_template(TEMPLATES, project_type)
    assert "Missing deployment template" in caught.value.message
    assert "fastapi, node, python" in caught.value.message


def test_users_can_point_to_their_own_templates(tmp_path: Path) -> None:
    text = (TEMPLATES / "python" / "test-pod.yaml").read_text().replace("/workspace/src", "/w")
    root = write_template(tmp_path, "rust", text)
    pod = the_pod(rendered(make_job(project_type="rust"), templates_dir=root))
    assert container(pod, "test")["workingDir"] == "/w"
    assert pod["metadata"]["labels"]["committee/project-type"] == "rust"
    with pytest.raises(UnknownProjectType, match="available templates: rust"):
        m.load_template(root, "python")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("kind: Pod\nspec:\n  containers: []\n", "no containers"),
        ("kind: Pod\nspec:\n  containers: [{name: other, command: [x]}]\n", "no container named"),
        ("kind: Pod\nspec:\n  containers: [{name: test}]\n", "needs a command"),
        ("kind: Service\n", "one Pod"),
        ("kind: Pod\n---\nkind: NetworkPolicy\n---\nkind: NetworkPolicy\n", "at most one"),
        ("kind: Pod\nspec: [\n", "not valid YAML"),
        (
            "kind: Pod\nspec:\n  containers: [{name: test, command: ['${RESOURCES} x']}]\n",
            "whole value",
        ),
    ],
)
def test_broken_templates_are_refused_with_the_reason(
    tmp_path: Path, text: str, problem: str
) -> None:
    root = write_template(tmp_path, "bad", text)
    with pytest.raises(ExecutorError, match=problem):
        rendered(make_job(project_type="bad"), templates_dir=root)


# ---------------------------------------------------------------- validation against the schemas


@pytest.mark.parametrize("project_type", ["fastapi", "python", "node"])
@pytest.mark.parametrize("network", [False, True])
@pytest.mark.parametrize("git_secret", [False, True])
def test_every_rendered_manifest_is_valid_kubernetes(
    project_type: str, network: bool, git_secret: bool
) -> None:
    manifests = rendered(
        make_job(project_type=project_type, network=network), git_secret=git_secret
    )
    kinds = [d["kind"] for d in manifests]
    assert kinds == ["Namespace", "ResourceQuota", "LimitRange", *["NetworkPolicy"] * 3, "Pod"]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_the_validator_does_catch_a_broken_manifest() -> None:
    pod = the_pod(rendered())
    container(pod, "test")["securityContext"]["runAsNonRoot"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_server_deployment_manifests_are_valid_kubernetes() -> None:
    documents = [
        d
        for path in sorted(SERVER_DIR.glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "Service", "ServiceAccount", "ClusterRole"} <= kinds
    assert {"ClusterRoleBinding", "PersistentVolumeClaim"} <= kinds
    for document in documents:
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_server_role_is_least_privilege() -> None:
    roles = [
        d
        for d in yaml.safe_load_all((SERVER_DIR / "rbac.yaml").read_text())
        if d and d["kind"] in ("ClusterRole", "Role")
    ]
    rules = [(tuple(r["resources"]), tuple(r["verbs"])) for d in roles for r in d["rules"]]
    granted = {(res, verb) for resources, verbs in rules for res in resources for verb in verbs}
    assert ("pods/log", "get") in granted and ("events", "list") in granted
    assert not any(verb in ("*", "escalate", "bind", "impersonate") for _, verb in granted)
    assert not any(res in ("*", "pods/exec", "clusterroles") for res, _ in granted)
    assert ("secrets", "list") not in granted and ("secrets", "watch") not in granted


# ---------------------------------------------------------------- restricted pod security


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    manifests = rendered(git_secret=True)
    namespace, pod = manifests[0], the_pod(manifests)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    names = [c["name"] for c in spec["initContainers"] + spec["containers"]]
    assert names == ["fetch", "test", "collect"]
    for each in spec["initContainers"] + spec["containers"]:
        context = each["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["runAsNonRoot"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["readOnlyRootFilesystem"] is True
        assert each["resources"]["limits"]["memory"]
    volume_kinds = {next(k for k in v if k != "name") for v in spec["volumes"]}
    assert volume_kinds <= {"emptyDir", "secret"}


def test_a_template_cannot_weaken_isolation(tmp_path: Path) -> None:
    text = """
kind: Pod
spec:
  hostNetwork: true
  hostPID: true
  securityContext: {runAsUser: 0, runAsNonRoot: false}
  containers:
    - name: test
      image: ${IMAGE}
      command: ["/bin/sh", "-c", "${COMMAND}"]
      securityContext:
        privileged: true
        allowPrivilegeEscalation: true
        runAsUser: 0
        capabilities: {add: [NET_ADMIN, SYS_ADMIN]}
        readOnlyRootFilesystem: false
"""
    pod = the_pod(
        rendered(
            make_job(project_type="evil"), templates_dir=write_template(tmp_path, "evil", text)
        )
    )
    spec = pod["spec"]
    assert "hostNetwork" not in spec and "hostPID" not in spec
    assert spec["securityContext"]["runAsUser"] == m.RUN_AS
    assert spec["securityContext"]["runAsNonRoot"] is True
    test = container(pod, "test")["securityContext"]
    assert test["privileged"] is False and test["allowPrivilegeEscalation"] is False
    assert test["capabilities"] == {"drop": ["ALL"]}
    assert "runAsUser" not in test
    # The one thing a template may choose: a writable root filesystem for its test container.
    assert test["readOnlyRootFilesystem"] is False
    assert container(pod, "fetch")["securityContext"]["readOnlyRootFilesystem"] is True


# ---------------------------------------------------------------- what goes into the pod


def test_pod_carries_labels_resources_deadline_and_the_commit() -> None:
    job = make_job(limits=Limits(memory_bytes=3 << 29, cpus=1.5), network=True, env={"A": "1"})
    pod = the_pod(rendered(job))
    labels = pod["metadata"]["labels"]
    assert pod["metadata"]["name"] == "committee-r1-0"
    assert pod["metadata"]["namespace"] == "im-chat--1001-user-42"
    assert labels[m.MANAGED_BY] == "committee"
    assert labels["committee/run-id"] == "r1"
    assert labels["committee/commit"] == job.commit
    assert labels["committee/user"] == "42"
    assert labels["committee/network"] == "open"
    test = container(pod, "test")
    amount = {"cpu": "1500m", "memory": "1536Mi"}
    assert test["resources"] == {"requests": amount, "limits": amount}
    assert pod["spec"]["activeDeadlineSeconds"] == 91 + 300
    env = {e["name"]: e.get("value") for e in test["env"]}
    assert env[JUNIT_ENV] == m.JUNIT_FILE
    assert env["A"] == "1" and env["COMMITTEE_COMMIT"] == job.commit
    fetch_env = {e["name"]: e["value"] for e in container(pod, "fetch")["env"]}
    assert fetch_env["COMMITTEE_COMMIT"] == job.commit
    assert fetch_env["COMMITTEE_REPO_URL"] == job.repo_url


def test_no_network_label_unless_asked() -> None:
    assert "committee/network" not in the_pod(rendered())["metadata"]["labels"]


def test_the_command_reaches_the_shell_verbatim() -> None:
    """Quotes, newlines, YAML syntax and Kubernetes' own $(VAR) syntax cannot change the
    manifest, and after Kubernetes' expansion the shell gets exactly the user's command."""
    command = "echo 'a: [b]' \"$HOME\" $(HOME) && \\\n  exit 3 # }}\n---\nkind: Secret"
    pod = the_pod(rendered(make_job(command=command)))
    argv = container(pod, "test")["command"]
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:6] == ["committee-test", "/bin/sh", "-c"]
    assert len(argv) == 7
    assert kubernetes_expand(argv[6]) == command
    assert yaml.safe_load(yaml.safe_dump(pod)) == pod


def kubernetes_expand(text: str) -> str:
    """What the kubelet does to a command with no env references: `$$` becomes `$`."""
    return text.replace("$$", "$")


def test_git_credentials_come_from_a_secret_never_from_the_spec() -> None:
    pod = the_pod(rendered(git_secret=True))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["committee-git"]["secret"]["secretName"] == m.GIT_SECRET_NAME
    fetch = container(pod, "fetch")
    assert {"name": "committee-git", "mountPath": m.GIT_DIR, "readOnly": True} in fetch[
        "volumeMounts"
    ]
    assert all(v["name"] != "committee-git" for v in container(pod, "test")["volumeMounts"])


def test_session_objects_quota_limits_and_default_deny() -> None:
    manifests = rendered()
    namespace, quota, limits, deny, open_egress, egress = manifests[:6]
    assert namespace["metadata"]["annotations"][m.LAST_USED] == m.rfc3339(NOW)
    assert namespace["metadata"]["annotations"]["committee/chat-id"] == "-1001"
    assert quota["spec"]["hard"]["pods"] == "8"
    assert limits["spec"]["limits"][0]["max"]["memory"] == "8Gi"
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert open_egress["spec"]["podSelector"] == {"matchLabels": {"committee/network": "open"}}
    assert egress["spec"]["podSelector"] == {"matchLabels": {"committee/project-type": "python"}}
    ports = [p["port"] for rule in egress["spec"]["egress"] for p in rule["ports"]]
    assert sorted(ports) == [53, 53, 443]
    assert "ingress" not in egress["spec"]
    for manifest in manifests:
        assert manifest["metadata"]["labels"][m.MANAGED_BY] == "committee"


# ---------------------------------------------------------------- `committee k8s render`


def parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="committee")
    k8s_cli.register(parser.add_subparsers(dest="command_name", required=True))
    return parser.parse_args(argv)


def test_render_prints_exactly_what_render_returns(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_cli(
        [
            "k8s", "render", "--project-type", "node", "--commit", "abc123",
            "--user-id", "7", "--chat-id", "9", "--", "npm", "test", "--", "--ci",
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    job = make_job(
        job_id="render", run_id="render", repo_url=k8s_cli.DEFAULT_REPO, commit="abc123",
        command="npm test -- --ci", project_type="node", user_id="7", chat_id="9", timeout_s=600,
    )  # fmt: skip
    template = m.load_template(TEMPLATES, "node")
    options = m.PodOptions(image=m.default_image("node"))
    expected = m.render(job, template, options, m.SessionPolicy(), NOW)
    stamp = documents[0]["metadata"]["annotations"][m.LAST_USED]
    expected[0]["metadata"]["annotations"][m.LAST_USED] = stamp
    assert documents == expected
    assert documents[0]["metadata"]["name"] == "im-chat-9-user-7"


def test_render_takes_the_command_as_one_string_too(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_cli(["k8s", "render", "--project-type", "python", "--command", "pytest -x"])
    args.func(args)
    pod = list(yaml.safe_load_all(capsys.readouterr().out))[-1]
    assert container(pod, "test")["command"][-1] == "pytest -x"


def test_render_refuses_an_unknown_project_type() -> None:
    args = parse_cli(["k8s", "render", "--project-type", "cobol", "--", "make", "test"])
    with pytest.raises(UnknownProjectType, match="Missing deployment template"):
        args.func(args)


# ---------------------------------------------------------------- the in-pod scripts, for real


def localise(script: str, workspace: Path, results: Path) -> str:
    return script.replace(m.WORKSPACE, str(workspace)).replace(m.RESULTS, str(results))


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
    }
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    done = subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)
    return done.stdout.decode().strip()


def test_fetch_checks_out_exactly_one_commit_shallowly(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for n in range(3):
        (repo / "file.txt").write_text(f"version {n}\n")
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", f"c{n}")
    wanted = git(repo, "rev-parse", "HEAD~1")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    env = {"PATH": os.environ["PATH"], "COMMITTEE_REPO_URL": f"file://{repo}"}
    env.update(COMMITTEE_COMMIT=wanted, GIT_TERMINAL_PROMPT="0", HOME=str(tmp_path))
    script = localise(m.FETCH_SCRIPT, workspace, tmp_path)
    done = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    src = workspace / "src"
    assert git(src, "rev-parse", "HEAD") == wanted
    assert git(src, "rev-list", "--count", "HEAD") == "1"
    assert (src / "file.txt").read_text() == "version 1\n"
    assert wanted in done.stdout


def test_wrapper_keeps_the_exit_code_and_leaves_the_done_marker(tmp_path: Path) -> None:
    script = localise(m.WRAPPER_SCRIPT, tmp_path, tmp_path)
    argv = ["/bin/sh", "-c", script, "committee-test", "/bin/sh", "-c", "echo hi; exit 3"]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (3, "hi\n")
    assert (tmp_path / ".done").exists()


def test_collect_prints_the_junit_files_written_during_the_job(tmp_path: Path) -> None:
    workspace, results = tmp_path / "workspace", tmp_path / "results"
    src = workspace / "src"
    (src / ".git").mkdir(parents=True)
    results.mkdir()
    (src / "junit-fixture.xml").write_text("<old/>")  # checked out with the commit: not a result
    (src / ".git" / "index").write_text("")
    os.utime(src / "junit-fixture.xml", (1, 1))
    (results / "junit.xml").write_text("<testsuite name='mine'/>")
    (src / "reports").mkdir()
    (src / "reports" / "TEST-unit.xml").write_text("<testsuite name='surefire'/>")
    (src / "node_modules").mkdir()
    (src / "node_modules" / "junit.xml").write_text("<vendored/>")
    for path in (results / "junit.xml", src / "reports" / "TEST-unit.xml"):
        os.utime(path, (2_000_000_000, 2_000_000_000))
    (results / ".done").touch()
    script = localise(m.COLLECT_SCRIPT, workspace, results)
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=10)
    files, problems = m.parse_collected(done.stdout)
    assert problems == ()
    assert sorted(files) == ["<testsuite name='mine'/>", "<testsuite name='surefire'/>"]


def test_parse_collected_reports_damage() -> None:
    good = m.parse_collected("committee-junit-begin a.xml\n!!!\ncommittee-junit-end\n")
    assert good[0] == ()
    assert any("could not be decoded" in p for p in good[1])
    assert any("did not finish" in p for p in good[1])
