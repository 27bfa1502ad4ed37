"""The Kubernetes executor's scenarios against a real cluster: runs whenever KUBECONFIG is set.

Needs the test image (default `committee-python:<version>`, built from
deployments/templates/python/Dockerfile and loaded into the cluster, e.g. `kind load docker-image`;
or set COMMITTEE_K8S_TEST_IMAGE) and egress from the cluster to the test repository (default:
github.com/octocat/Hello-World; set COMMITTEE_K8S_TEST_REPO and COMMITTEE_K8S_TEST_COMMIT).
Every test uses its own session namespace and deletes it afterwards. Eviction and node loss
are not provoked here (that needs node-level fault injection): test_k8s_executor.py covers them
against the fake API server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Namespace, Pod

from committee import k8s_manifests as m
from committee.executors import Job, Limits, Outcome, Stream
from committee.executors.kubernetes import KubernetesExecutor, Timing

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"),
        reason="KUBECONFIG is not set: these tests need a real Kubernetes cluster",
    ),
]

IMAGE = os.environ.get("COMMITTEE_K8S_TEST_IMAGE") or m.default_image("python")
REPO = os.environ.get("COMMITTEE_K8S_TEST_REPO", "https://github.com/octocat/Hello-World.git")
COMMIT = os.environ.get("COMMITTEE_K8S_TEST_COMMIT", "7fd1a60b01f91b314f59955a4e4d4e80d8edf11d")
TIMING = Timing(poll_s=0.5, unschedulable_grace_s=5, startup_allowance_s=30, gc_interval_s=None)


@dataclass
class Cluster:
    executor: KubernetesExecutor
    client: AsyncClient
    user: str
    emitted: list[tuple[Stream, list[str]]] = field(default_factory=list)

    async def emit(self, stream: Stream, lines: list[str]) -> None:
        self.emitted.append((stream, lines))

    def lines(self, stream: Stream = "stdout") -> list[str]:
        return [line for s, batch in self.emitted if s == stream for line in batch]

    def job(self, command: str, n: int = 0, **changes: Any) -> Job:
        fields: dict[str, Any] = {
            "job_id": f"{self.user}-{n}",
            "run_id": self.user,
            "repo_url": REPO,
            "mirror": Path("/nonexistent"),
            "commit": COMMIT,
            "command": command,
            "project_type": "python",
            "user_id": self.user,
            "chat_id": "ci",
            "timeout_s": 120.0,
        }
        return Job(**{**fields, **changes})

    async def run(self, job: Job) -> Outcome:
        return await self.executor.run(job, self.emit)

    async def pod_exists(self, job: Job) -> bool:
        namespace = m.namespace_name(job.user_id, job.chat_id)
        try:
            await self.client.get(Pod, m.pod_name(job.job_id), namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        return True


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    templates = tmp_path / "templates"
    shutil.copytree(m.default_templates_dir(), templates)
    # A project type whose pods no node accepts, for the Unschedulable scenario.
    text = (templates / "python" / "test-pod.yaml").read_text()
    unschedulable = text.replace("spec:\n  containers:", _NODE_SELECTOR + "  containers:", 1)
    (templates / "nowhere").mkdir()
    (templates / "nowhere" / "test-pod.yaml").write_text(unschedulable)
    executor = KubernetesExecutor(
        templates,
        image_overrides={"python": IMAGE, "nowhere": IMAGE},
        timing=TIMING,
    )
    client = AsyncClient()
    user = f"ci{uuid.uuid4().hex[:8]}"
    try:
        yield Cluster(executor, client, user)
    finally:
        await executor.aclose()
        namespace = m.namespace_name(user, "ci")
        try:
            await client.delete(Namespace, namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        await client.close()


_NODE_SELECTOR = "spec:\n  nodeSelector:\n    committee.test/no-such-node: 'true'\n"


async def test_a_commit_runs_in_its_pod_and_reports_back(cluster: Cluster) -> None:
    junit = '<testsuite name="c" tests="1"><testcase name="t"/></testsuite>'
    command = (
        f"echo hello from the pod; git rev-parse HEAD; printf '{junit}' > \"$COMMITTEE_JUNIT\""
    )
    job = cluster.job(command)
    outcome = await cluster.run(job)
    assert outcome.error == "" and outcome.exit_code == 0
    assert "hello from the pod" in cluster.lines() and COMMIT in cluster.lines()
    assert outcome.junit_xml == (junit,)
    await cluster.executor.release(job, passed=True)
    await asyncio.sleep(2)
    assert not await cluster.pod_exists(job)


async def test_a_failing_commit_keeps_its_pod_and_reuses_the_namespace(cluster: Cluster) -> None:
    first = await cluster.run(cluster.job("exit 0", 0))
    namespace = m.namespace_name(cluster.user, "ci")
    uid = (await cluster.client.get(Namespace, namespace)).metadata.uid
    failing = cluster.job("echo failing; exit 3", 1)
    outcome = await cluster.run(failing)
    assert first.exit_code == 0 and outcome.exit_code == 3 and outcome.error == ""
    await cluster.executor.release(failing, passed=False)
    pod = await cluster.client.get(Pod, m.pod_name(failing.job_id), namespace=namespace)
    assert m.EXPIRES_AT in (pod.metadata.annotations or {})
    assert (await cluster.client.get(Namespace, namespace)).metadata.uid == uid


async def test_an_image_that_cannot_be_pulled(cluster: Cluster) -> None:
    cluster.executor.image_overrides["python"] = "registry.invalid/committee/nope:1"
    outcome = await cluster.run(cluster.job("true"))
    assert outcome.error.startswith(("ImagePullBackOff", "ErrImagePull")), outcome.error
    assert any("event:" in line for line in outcome.diagnostics)


async def test_a_pod_no_node_accepts(cluster: Cluster) -> None:
    outcome = await cluster.run(cluster.job("true", project_type="nowhere"))
    assert outcome.error.startswith("Unschedulable"), outcome.error
    assert any("FailedScheduling" in line for line in outcome.diagnostics)


async def test_running_out_of_memory(cluster: Cluster) -> None:
    job = cluster.job(
        "python -c 'b = bytearray(1 << 30)'", limits=Limits(memory_bytes=64 << 20, cpus=0.5)
    )
    outcome = await cluster.run(job)
    assert outcome.error.startswith("OOMKilled"), outcome.error


async def test_running_past_the_deadline(cluster: Cluster) -> None:
    outcome = await cluster.run(cluster.job("sleep 600", timeout_s=1))
    assert outcome.timed_out, outcome


async def test_a_commit_that_cannot_be_fetched(cluster: Cluster) -> None:
    outcome = await cluster.run(cluster.job("true", commit="0" * 40))
    assert outcome.error.startswith("FetchFailed"), outcome.error
    assert any(line.startswith("fetch:") for line in outcome.diagnostics)


async def test_cancelling_deletes_the_pod(cluster: Cluster) -> None:
    job = cluster.job("sleep 600")
    task = asyncio.create_task(cluster.run(job))
    while "test container started" not in cluster.lines("system"):
        assert not task.done(), task.result()
        await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(2)
    assert not await cluster.pod_exists(job)
