"""The Kubernetes executor's orchestration, through the real lightkube AsyncClient, against the fake
API server of k8s_fake.py on 127.0.0.1: sessions, pod lifecycle, live logs, results, every failure
reason, cleanup and cancellation."""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig

from committee import k8s_cli
from committee import k8s_manifests as m
from committee.errors import ExecutorError, TemporaryExecutorError, UnknownProjectType
from committee.executors import Job, Outcome, Stream
from committee.executors.kubernetes import KubernetesExecutor, Timing
from k8s_fake import (
    FakeKube,
    Obj,
    Scenario,
    event,
    make_job,
    running,
    scripted_run,
    status,
    terminated,
    waiting,
)

FAST = Timing(
    poll_s=0.02,
    unschedulable_grace_s=0.0,
    pending_timeout_s=5.0,
    log_drain_s=0.3,
    log_reconnects=3,
    collect_timeout_s=2.0,
    api_retries=2,
    gc_interval_s=None,
)
JUNIT = '<testsuite name="t" tests="2" failures="1"><testcase name="a"/></testsuite>'


JOB = make_job()
NAMESPACE = "im-chat-7-user-42"
POD = "committee-r1-0"


@dataclass
class Harness:
    fake: FakeKube
    executor: KubernetesExecutor
    kubeconfig: Path
    emitted: list[tuple[Stream, list[str]]] = field(default_factory=list)

    async def emit(self, stream: Stream, lines: list[str]) -> None:
        self.emitted.append((stream, lines))

    def lines(self, stream: Stream = "stdout") -> list[str]:
        return [line for s, batch in self.emitted if s == stream for line in batch]

    async def run(self, scenario: Scenario | None = None, job: Job = JOB) -> Outcome:
        if scenario is not None:
            self.fake.scenario = lambda pod: scenario
        return await asyncio.wait_for(self.executor.run(job, self.emit), 10)


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Harness]:
    fake = FakeKube()
    async with fake.running(tmp_path) as kubeconfig:
        executor = KubernetesExecutor(kubeconfig=kubeconfig, timing=FAST)
        try:
            yield Harness(fake, executor, kubeconfig)
        finally:
            await executor.aclose()


def strip_server_fields(obj: Obj) -> Obj:
    meta = {k: v for k, v in obj["metadata"].items()}
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        meta.pop(key, None)
    return {k: v for k, v in {**obj, "metadata": meta}.items() if k != "status"}


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, "condition not reached"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- a job from start to end


async def test_a_job_streams_its_output_and_returns_exit_code_and_junit(kube: Harness) -> None:
    output = ["collecting\n", "test_a PASSED\n", "test_b FAILED\n", "1 failed, 1 passed\n"]
    outcome = await kube.run(scripted_run(output, exit_code=1, junit={"junit.xml": JUNIT}))
    assert outcome.exit_code == 1
    assert outcome.error == "" and not outcome.timed_out
    assert outcome.junit_xml == (JUNIT,)
    assert kube.lines() == [line.rstrip("\n") for line in output]
    assert outcome.output_tail.endswith("1 failed, 1 passed")
    system = kube.lines("system")
    assert system[0] == f"pod {NAMESPACE}/{POD} created (image committee-python:0.1.0)"
    assert "test container exited with code 1" in system
    # The log was followed live, once: no reconnect was needed.
    assert kube.fake.count("GET", "/log?") == 2  # test (follow) and collect
    assert kube.fake.count("GET", "container=test&follow=true") == 1


async def test_what_is_applied_is_exactly_what_render_gives(kube: Harness) -> None:
    await kube.run(scripted_run(["ok\n"]))
    template = m.load_template(kube.executor.templates_dir, "python")
    expected = kube.executor.manifests(JOB, template)
    applied = {(o["kind"], o["metadata"]["name"]): o for o in kube.fake.objects.values()}
    for manifest in expected:
        stored = strip_server_fields(applied[(manifest["kind"], manifest["metadata"]["name"])])
        if manifest["kind"] == "Namespace":
            stamp = stored["metadata"]["annotations"][m.LAST_USED]
            manifest["metadata"]["annotations"][m.LAST_USED] = stamp
        assert stored == manifest


async def test_release_deletes_passing_pods_and_keeps_failing_ones_with_an_expiry(
    kube: Harness,
) -> None:
    await kube.run(scripted_run(["ok\n"]))
    await kube.executor.release(JOB, passed=True)
    assert ("pods", NAMESPACE, POD) in kube.fake.deleted

    failing = make_job(job_id="r1-1")
    await kube.run(scripted_run(["boom\n"], exit_code=1), job=failing)
    before = time.time()
    await kube.executor.release(failing, passed=False)
    assert ("pods", NAMESPACE, "committee-r1-1") not in kube.fake.deleted
    pod = kube.fake.objects[("pods", NAMESPACE, "committee-r1-1")]
    expires = m.parse_rfc3339(pod["metadata"]["annotations"][m.EXPIRES_AT])
    assert expires is not None
    assert before + 3600 - 2 <= expires <= time.time() + 3600 + 2


async def test_release_of_a_pod_already_gone_is_quiet(kube: Harness) -> None:
    await kube.executor.release(JOB, passed=True)
    await kube.executor.release(JOB, passed=False)
    assert kube.fake.deleted == []


# ---------------------------------------------------------------- sessions


async def test_a_session_namespace_is_created_once_and_reused(kube: Harness) -> None:
    for n in range(3):
        await kube.run(scripted_run(["ok\n"]), job=make_job(job_id=f"r1-{n}"))
    assert kube.fake.count("PATCH", f"/namespaces/{NAMESPACE}?") == 3  # last-used, each time
    assert kube.fake.count("PATCH", "/resourcequotas/") == 1
    assert kube.fake.count("PATCH", "/limitranges/") == 1
    assert kube.fake.count("PATCH", "/networkpolicies/") == 3  # deny-all, open, python
    assert len(kube.fake.stored("namespaces")) == 1

    await kube.run(scripted_run(["ok\n"]), job=make_job(job_id="r2-0", chat_id="8"))
    names = {o["metadata"]["name"] for o in kube.fake.stored("namespaces")}
    assert names == {NAMESPACE, "im-chat-8-user-42"}
    assert kube.fake.count("PATCH", "/resourcequotas/") == 2


async def test_a_namespace_deleted_behind_our_back_is_set_up_again(kube: Harness) -> None:
    await kube.run(scripted_run(["ok\n"]))
    del kube.fake.objects[("namespaces", None, NAMESPACE)]
    await kube.run(scripted_run(["ok\n"]), job=make_job(job_id="r1-1"))
    assert kube.fake.count("PATCH", "/resourcequotas/") == 2


async def test_git_credentials_are_copied_from_the_servers_secret_never_into_the_pod(
    tmp_path: Path,
) -> None:
    fake = FakeKube(lambda pod: scripted_run(["ok\n"]))
    token = "ghp_s3cr3tt0k3n"
    encoded = base64.b64encode(f"https://x:{token}@git.example.com\n".encode()).decode()
    data = {m.GIT_SECRET_KEY: encoded}
    async with fake.running(tmp_path) as kubeconfig:
        fake.put("secrets", "default", {"metadata": {"name": "creds"}, "data": data})
        executor = KubernetesExecutor(
            kubeconfig=kubeconfig, timing=FAST, git_credentials_secret="creds"
        )
        try:
            await executor.run(JOB, _ignore)
        finally:
            await executor.aclose()
    copy = fake.objects[("secrets", NAMESPACE, m.GIT_SECRET_NAME)]
    assert copy["data"] == data
    (pod,) = fake.stored("pods")
    assert token not in str(pod) and encoded not in str(pod)
    assert any(v.get("secret") for v in pod["spec"]["volumes"])


async def _ignore(stream: Stream, lines: list[str]) -> None:
    return None


# ---------------------------------------------------------------- logs that drop


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_a_dropped_log_stream_loses_and_repeats_nothing(kube: Harness, how: str) -> None:
    output = [f"line {n}\n" for n in range(12)]
    scenario = scripted_run(output, exit_code=0, junit={"junit.xml": JUNIT})
    scenario.drop_log, scenario.drop_after = how, 5
    outcome = await kube.run(scenario)
    assert kube.lines() == [line.rstrip("\n") for line in output]
    assert outcome.exit_code == 0 and outcome.junit_xml == (JUNIT,)
    assert kube.fake.count("GET", "container=test&follow=true") >= 2
    broke = [line for line in kube.lines("system") if "log stream broke" in line]
    assert bool(broke) == (how == "abort")


async def test_exit_code_comes_from_the_status_even_with_no_log_at_all(kube: Harness) -> None:
    scenario = scripted_run([f"line {n}\n" for n in range(5)], exit_code=4)
    scenario.drop_log, scenario.drop_after = "abort", 0
    kube.executor.timing = Timing(**{**FAST.__dict__, "log_reconnects": 0})
    outcome = await kube.run(scenario)
    assert outcome.exit_code == 4
    assert any("gave up following the log" in line for line in kube.lines("system"))


# ---------------------------------------------------------------- failure forensics


def _init_waiting(reason: str, message: str) -> Scenario:
    main = [waiting("test", "PodInitializing"), waiting("collect", "PodInitializing")]
    pulling = status("Pending", [waiting("fetch", reason, message)], main)
    events = [
        event("Pulling", 'Pulling image "committee-python:0.1.0"', kind="Normal"),
        event("Failed", f'Failed to pull image "committee-python:0.1.0": {message}'),
        event("BackOff", 'Back-off pulling image "committee-python:0.1.0"', count=4),
    ]
    return Scenario(statuses=[(0.0, status("Pending")), (0.05, pulling)], events=events)


def _unschedulable() -> Scenario:
    message = "0/3 nodes are available: 3 Insufficient memory."
    condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    pending = status("Pending", conditions=[{**condition, "message": message}])
    return Scenario(statuses=[(0.0, pending)], events=[event("FailedScheduling", message)])


def _ended_while_running(phase: str, **pod_fields: Any) -> Scenario:
    base = scripted_run([f"step {n}\n" for n in range(50)])
    fetched = [terminated("fetch", 0)]
    killed = [terminated("test", 137), terminated("collect", 137)]
    base.statuses = [*base.statuses[:3], (0.2, status(phase, fetched, killed, **pod_fields))]
    base.events = [event("Killing", "Stopping container test", kind="Normal")]
    return base


def _fetch_failed() -> Scenario:
    main = [waiting("test", "PodInitializing"), waiting("collect", "PodInitializing")]
    failed = status("Failed", [terminated("fetch", 128)], main)
    log = "fatal: remote error: upload-pack: not our ref 0123456789abcdef\n"
    return Scenario(
        statuses=[(0.0, status("Pending", [running("fetch")], main)), (0.05, failed)],
        logs={"fetch": [(0.0, log)]},
    )


def _disrupted() -> Scenario:
    base = scripted_run([f"step {n}\n" for n in range(50)])
    condition = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
    condition["message"] = "Taint manager: deleting due to NoExecute taint"
    main = [running("test"), running("collect")]
    disrupted = status("Running", [terminated("fetch", 0)], main, conditions=[condition])
    base.statuses = [*base.statuses[:3], (0.15, disrupted)]
    return base


def _vanishes() -> Scenario:
    base = scripted_run([f"step {n}\n" for n in range(50)])
    base.vanish_at = 0.15
    return base


FAILURES: list[tuple[str, Callable[[], Scenario], str, bool, str]] = [
    (
        "ImagePullBackOff",
        lambda: _init_waiting("ImagePullBackOff", 'Back-off pulling image "committee-python"'),
        "ImagePullBackOff: container fetch",
        False,
        "event: Warning BackOff",
    ),
    (
        "ErrImagePull",
        lambda: _init_waiting("ErrImagePull", "rpc error: not found"),
        "ErrImagePull: container fetch (rpc error: not found)",
        False,
        "Failed to pull image",
    ),
    (
        "Unschedulable",
        _unschedulable,
        "Unschedulable: 0/3 nodes are available: 3 Insufficient memory.",
        False,
        "event: Warning FailedScheduling",
    ),
    (
        "OOMKilled",
        lambda: scripted_run(["allocating\n"], exit_code=137, reason="OOMKilled"),
        "OOMKilled: the test container ran out of memory (exit code 137)",
        False,
        "",
    ),
    (
        "DeadlineExceeded",
        lambda: _ended_while_running(
            "Failed",
            reason="DeadlineExceeded",
            message="Pod was active on the node longer than the specified deadline",
        ),
        "DeadlineExceeded: Pod was active on the node longer than the specified deadline",
        True,
        "event: Normal Killing",
    ),
    (
        "Evicted",
        lambda: _ended_while_running(
            "Failed", reason="Evicted", message="The node was low on resource: memory."
        ),
        "Evicted: The node was low on resource: memory.",
        False,
        "event: Normal Killing",
    ),
    (
        "NodeLost",
        lambda: _ended_while_running(
            "Unknown",
            reason="NodeLost",
            message="Node n1 which was running the pod is unresponsive",
        ),
        "NodeLost: Node n1 which was running the pod is unresponsive",
        False,
        "",
    ),
    (
        "DisruptionTarget",
        _disrupted,
        "DeletionByTaintManager: Taint manager: deleting due to NoExecute taint",
        False,
        "",
    ),
    ("PodDeleted", _vanishes, "PodDeleted: the pod disappeared", False, ""),
    (
        "FetchFailed",
        _fetch_failed,
        "FetchFailed: could not fetch the commit (git exit code 128)",
        False,
        "fetch: fatal: remote error: upload-pack: not our ref",
    ),
]


@pytest.mark.parametrize(
    ("scenario", "error", "timed_out", "diagnostic"),
    [pytest.param(*case[1:], id=case[0]) for case in FAILURES],
)
async def test_a_pod_that_cannot_do_its_job_says_why(
    kube: Harness,
    scenario: Callable[[], Scenario],
    error: str,
    timed_out: bool,
    diagnostic: str,
) -> None:
    outcome = await kube.run(scenario())
    assert outcome.error.startswith(error), outcome.error
    assert outcome.timed_out is timed_out
    assert outcome.junit_xml == ()
    if diagnostic:
        assert any(diagnostic in line for line in outcome.diagnostics), outcome.diagnostics
    assert kube.lines("system")[-1] == outcome.error
    # Failed pods are kept for forensics until release() marks them.
    assert ("pods", NAMESPACE, POD) not in kube.fake.deleted


async def test_an_image_pull_failure_is_reported_before_any_deadline(kube: Harness) -> None:
    started = time.monotonic()
    await kube.run(_init_waiting("ImagePullBackOff", "not found"))
    assert time.monotonic() - started < 2


async def test_unschedulable_pods_get_a_grace_period(kube: Harness) -> None:
    kube.executor.timing = Timing(**{**FAST.__dict__, "unschedulable_grace_s": 0.3})
    scenario = _unschedulable()
    scenario.statuses.append((0.15, scripted_run(["ok\n"]).statuses[-1][1]))
    outcome = await kube.run(scenario)  # a node showed up within the grace period
    assert outcome.error == "" and outcome.exit_code == 0


async def test_a_pod_that_never_starts_gives_up_after_the_pending_timeout(
    kube: Harness,
) -> None:
    kube.executor.timing = Timing(**{**FAST.__dict__, "pending_timeout_s": 0.2})
    outcome = await kube.run(Scenario(statuses=[(0.0, status("Pending"))]))
    assert outcome.error.startswith("PodPending: the pod did not start within")


# ---------------------------------------------------------------- refusals


async def test_unknown_project_type_is_refused_before_touching_the_cluster(
    kube: Harness,
) -> None:
    with pytest.raises(UnknownProjectType, match="Missing deployment template"):
        await kube.run(job=make_job(project_type="cobol"))
    assert kube.fake.requests == []


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ('pods "x" is forbidden: exceeded quota: committee-quota', TemporaryExecutorError),
        ('pods "x" is forbidden: violates PodSecurity "restricted:latest"', ExecutorError),
    ],
)
async def test_a_refused_pod_is_an_executor_error(
    kube: Harness, message: str, error: type[ExecutorError]
) -> None:
    kube.fake.refuse["pods"] = (403, message)
    with pytest.raises(error, match="Kubernetes refused to create pod") as caught:
        await kube.run(scripted_run(["ok\n"]))
    assert message in caught.value.message
    assert (type(caught.value) is TemporaryExecutorError) == (error is TemporaryExecutorError)


async def test_an_unreachable_api_is_a_temporary_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    async with FakeKube().running(tmp_path) as served:
        kubeconfig.write_text(served.read_text())
    executor = KubernetesExecutor(kubeconfig=kubeconfig, timing=FAST)  # its server is gone
    try:
        with pytest.raises(TemporaryExecutorError, match="could not reach Kubernetes"):
            await executor.run(JOB, _ignore)
    finally:
        await executor.aclose()


async def test_a_missing_kubeconfig_is_an_executor_error(tmp_path: Path) -> None:
    executor = KubernetesExecutor(kubeconfig=tmp_path / "nope", timing=FAST)
    with pytest.raises(ExecutorError, match="no usable Kubernetes configuration"):
        await executor.run(JOB, _ignore)
    assert executor.describe()["cluster"] == "not connected yet"


# ---------------------------------------------------------------- cancellation


@pytest.mark.parametrize("when", ["pending", "running"])
async def test_cancelling_deletes_the_pod_before_run_returns(kube: Harness, when: str) -> None:
    endless = Scenario(statuses=[(0.0, status("Pending"))])
    if when == "running":
        endless = scripted_run([f"tick {n}\n" for n in range(2000)], step=0.05)
    kube.fake.scenario = lambda pod: endless
    task = asyncio.create_task(kube.executor.run(JOB, kube.emit))
    if when == "running":
        await until(lambda: "tick 2" in kube.lines())
    else:
        await until(lambda: bool(kube.fake.stored("pods")))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ("pods", NAMESPACE, POD) in kube.fake.deleted
    assert kube.fake.count("DELETE", f"/pods/{POD}?gracePeriodSeconds=0") == 1


# ---------------------------------------------------------------- garbage collection


def _pod(name: str, phase: str, **annotations: str) -> Obj:
    meta = {"name": name, "labels": {m.MANAGED_BY: "committee"}, "annotations": annotations}
    spec = {"activeDeadlineSeconds": 100, "containers": [{"name": "test", "image": "i"}]}
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def _namespace(name: str, last_used: float, ours: bool = True) -> Obj:
    labels = {m.MANAGED_BY: "committee"} if ours else {}
    meta = {"name": name, "labels": labels, "annotations": {m.LAST_USED: m.rfc3339(last_used)}}
    return {"metadata": meta}


async def test_gc_deletes_expired_pods_and_idle_empty_namespaces(kube: Harness) -> None:
    now = time.time()
    day, fake = 86400, kube.fake
    for name, last_used, ours in [
        ("ns-idle", now - 2 * day, True),
        ("ns-idle-but-busy", now - 2 * day, True),
        ("ns-recent", now - 60, True),
        ("ns-orphans", now - 2 * day, True),
        ("not-ours", now - 9 * day, False),
    ]:
        fake.put("namespaces", None, _namespace(name, last_used, ours))
    fake.put("pods", "ns-idle", _pod("expired", "Failed", **{m.EXPIRES_AT: m.rfc3339(now - 1)}))
    fake.put(
        "pods", "ns-idle-but-busy", _pod("kept", "Failed", **{m.EXPIRES_AT: m.rfc3339(now + 99)})
    )
    fake.put("pods", "ns-recent", _pod("fresh", "Running"))
    orphan = _pod("orphan", "Succeeded")
    orphan["metadata"]["creationTimestamp"] = m.rfc3339(now - 3 * 3600)
    fake.put("pods", "ns-orphans", orphan)

    removed = await kube.executor.collect_garbage()

    assert sorted(removed) == [
        "namespace ns-idle",
        "namespace ns-orphans",
        "pod ns-idle/expired",
        "pod ns-orphans/orphan",
    ]
    assert ("namespaces", None, "not-ours") in fake.objects
    assert ("pods", "ns-idle-but-busy", "kept") in fake.objects
    assert ("pods", "ns-recent", "fresh") in fake.objects


async def test_gc_never_takes_a_pod_that_is_still_being_run(kube: Harness) -> None:
    scenario = scripted_run([f"tick {n}\n" for n in range(40)], step=0.02)
    kube.fake.scenario = lambda pod: scenario
    kube.executor.failed_pod_ttl_s = -1e9  # everything looks expired
    task = asyncio.create_task(kube.executor.run(JOB, kube.emit))
    await until(lambda: "tick 1" in kube.lines())
    assert await kube.executor.collect_garbage() == []
    assert (await task).exit_code == 0


async def test_gc_runs_on_a_timer_and_stops_with_aclose(kube: Harness) -> None:
    kube.executor.timing = Timing(**{**FAST.__dict__, "gc_interval_s": 0.05})
    now = time.time()
    kube.fake.put("namespaces", None, _namespace("ns-old", now - 9 * 86400))
    await kube.run(scripted_run(["ok\n"]))
    await until(lambda: ("namespaces", None, "ns-old") in kube.fake.deleted)
    await kube.executor.aclose()
    requests = len(kube.fake.requests)
    await asyncio.sleep(0.2)
    assert len(kube.fake.requests) == requests


async def test_committee_k8s_gc_on_demand(
    kube: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    kube.fake.put("namespaces", None, _namespace("ns-old", now - 9 * 86400))
    parser = argparse.ArgumentParser()
    k8s_cli.register(parser.add_subparsers())
    args = parser.parse_args(["k8s", "gc", "--kubeconfig", str(kube.kubeconfig)])
    assert await asyncio.to_thread(args.func, args) == 0
    assert "deleted namespace ns-old" in capsys.readouterr().out
    assert ("namespaces", None, "ns-old") in kube.fake.deleted


# ---------------------------------------------------------------- the client


async def test_an_injected_client_factory_is_used(kube: Harness) -> None:
    made: list[AsyncClient] = []

    def factory() -> AsyncClient:
        made.append(AsyncClient(KubeConfig.from_file(kube.kubeconfig), field_manager="committee"))
        return made[-1]

    kube.fake.scenario = lambda pod: scripted_run(["ok\n"])
    executor = KubernetesExecutor(client_factory=factory, timing=FAST)
    try:
        outcome = await executor.run(JOB, _ignore)
        described = executor.describe()
    finally:
        await executor.aclose()
    assert outcome.exit_code == 0 and len(made) == 1
    assert described["executor"] == "kubernetes"
    assert described["cluster"].startswith("http://127.0.0.1:")


def test_an_unknown_project_type_is_refused_up_front_with_the_templates_listed() -> None:
    executor = KubernetesExecutor(
        templates_dir=Path(__file__).parents[1] / "deployments" / "templates"
    )
    executor.check_project_type("fastapi")
    with pytest.raises(UnknownProjectType, match="available templates: fastapi, node, python"):
        executor.check_project_type("cobol")
