"""The Kubernetes executor: a namespace per user session, a pod per commit.

Why lightkube, and why only here: it has typed models for every Kubernetes kind, so a pod's status
is read through checked attributes instead of guessed dict keys; it is a real asyncio client, so
the log streams and status polls of many pods share the event loop with no thread per pod; and it
is small (httpx and msgspec), next to the generated official client. Nothing else in committee
imports it: manifests are plain dicts from `committee.k8s_manifests`.

One job: apply the session's namespace objects (all of them once per namespace and process, the
namespace's last-used mark every time) → create the pod → poll it until the test container starts,
turning a pod that cannot start (image pull, scheduling, fetch) into an Outcome with the reason
and the pod's events → follow the test container's log live, reconnecting and skipping what was
already seen if the stream drops → take the exit code from the container's terminated state, not
from the stream → read the JUnit files from the `collect` container's log → Outcome. Cancelling
deletes the pod before `run` returns. `release` deletes passing pods and marks failing ones with an
expiry; `collect_garbage` (on a timer, and `committee k8s gc`) deletes expired pods and idle
namespaces.

Kubernetes merges a container's stdout and stderr into one log: everything arrives as "stdout".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from committee.capture import LineSplitter, Tail
from committee.errors import ExecutorError, TemporaryExecutorError
from committee.executors import Emit, Job, Outcome
from committee.k8s_manifests import (
    COLLECT_CONTAINER,
    COMMITTEE,
    EXPIRES_AT,
    FETCH_CONTAINER,
    GIT_SECRET_ENV,
    GIT_SECRET_KEY,
    GIT_SECRET_NAME,
    LAST_USED,
    MANAGED_BY,
    TEST_CONTAINER,
    Manifest,
    PodOptions,
    SessionPolicy,
    Template,
    check_repo_url,
    default_image,
    default_templates_dir,
    load_template,
    namespace_name,
    parse_collected,
    parse_rfc3339,
    pod_name,
    render,
    rfc3339,
)

try:
    import httpx2
    from lightkube import ALL_NS, ApiError, AsyncClient, ConfigError, KubeConfig, codecs
    from lightkube.core.client import FieldSelector, LabelSelector
    from lightkube.models.core_v1 import ContainerStateTerminated, ContainerStatus, PodStatus
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Event, Namespace, Pod, Secret
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ExecutorError(
        "the Kubernetes executor needs lightkube: pip install 'committee[kubernetes]'"
    ) from exc

log = logging.getLogger(__name__)

FIELD_MANAGER = "committee"
# Waiting reasons that do not fix themselves: the pod would wait until its deadline for nothing.
STUCK = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
CANNOT_START = frozenset({"StartError", "ContainerCannotRun"})


@dataclass(frozen=True)
class Timing:
    """How the executor paces itself; tests shrink these."""

    poll_s: float = 1.0
    unschedulable_grace_s: float = 60.0  # a cluster autoscaler may still be adding a node
    pending_timeout_s: float = 600.0  # deadlines only count once a node has taken the pod
    startup_allowance_s: int = 300  # pull and fetch time, added to activeDeadlineSeconds
    overdue_grace_s: float = 30.0  # past the deadline, stop waiting for Kubernetes to enforce it
    log_drain_s: float = 10.0  # after the exit, how long the log stream may take to finish
    log_reconnects: int = 5
    collect_timeout_s: float = 60.0
    api_retries: int = 5  # consecutive failed status polls before giving up
    gc_interval_s: float | None = 900.0


@dataclass(frozen=True)
class Verdict:
    """What a pod's status says, for the job."""

    state: Literal["pending", "running", "finished", "failed"]
    exit_code: int | None = None
    error: str = ""
    timed_out: bool = False
    note: str = ""  # progress while pending, for the "system" stream
    explained_by: str = ""  # a container whose log tells why the pod failed

    @property
    def ended(self) -> bool:
        return self.state in ("finished", "failed")


def _failed(error: str, exit_code: int | None = None, timed_out: bool = False) -> Verdict:
    return Verdict("failed", exit_code=exit_code, error=error, timed_out=timed_out)


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(
        self,
        templates_dir: Path | None = None,
        *,
        kubeconfig: Path | None = None,
        failed_pod_ttl_s: float = 3600.0,
        namespace_ttl_s: float = 86400.0,
        image_overrides: Mapping[str, str] | None = None,
        image_prefix: str | None = None,
        git_credentials_secret: str | None = None,
        session_policy: SessionPolicy | None = None,
        timing: Timing | None = None,
        client_factory: Callable[[], AsyncClient] | None = None,
    ) -> None:
        """`image_prefix` goes before the default image names (e.g. "registry.example.com/";
        default $COMMITTEE_K8S_IMAGE_PREFIX); `git_credentials_secret` (default
        $COMMITTEE_K8S_GIT_SECRET) names a Secret in the server's own namespace with a
        `.git-credentials` key, copied into each session namespace for the fetch container."""
        self.templates_dir = templates_dir or default_templates_dir()
        self.kubeconfig = kubeconfig
        self.failed_pod_ttl_s = failed_pod_ttl_s
        self.namespace_ttl_s = namespace_ttl_s
        self.image_overrides = dict(image_overrides or {})
        self.image_prefix = image_prefix
        self.git_credentials_secret = git_credentials_secret or os.environ.get(GIT_SECRET_ENV)
        self.session_policy = session_policy or SessionPolicy()
        self.timing = timing or Timing()
        self._client_factory = client_factory or self._default_client
        self._client: AsyncClient | None = None
        self._ready: set[tuple[str, str]] = set()  # (namespace uid, project type) fully applied
        self._active: set[tuple[str, str]] = set()  # (namespace, pod) being run: never collected
        self._gc_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the Executor protocol

    def check_project_type(self, project_type: str) -> None:
        load_template(self.templates_dir, project_type)  # raises UnknownProjectType

    async def run(self, job: Job, emit: Emit) -> Outcome:
        template = load_template(self.templates_dir, job.project_type)
        check_repo_url(job.repo_url)
        manifests = self.manifests(job, template)
        client = self._connect()
        self._start_gc()
        pod = manifests[-1]
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        self._active.add(key)  # from now on, garbage collection keeps off this namespace
        try:
            await self._ensure_session(client, template, manifests[:-1])
            return await self._run_pod(client, job, emit, pod)
        finally:
            self._active.discard(key)

    async def _run_pod(self, client: AsyncClient, job: Job, emit: Emit, pod: Manifest) -> Outcome:
        namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            with _api(f"create pod {name}"):
                await client.create(cast(Pod, Pod.from_dict(pod)))
            image = pod["spec"]["containers"][0]["image"]
            await emit("system", [f"pod {namespace}/{name} created (image {image})"])
            deadline = pod["spec"]["activeDeadlineSeconds"] + self.timing.overdue_grace_s
            watch = _PodRun(client, job, emit, namespace, name, self.timing, deadline)
            return await watch.supervise()
        except BaseException:
            # Cancelled or broken, even while the creation was in flight: the pod must not
            # outlive `run`.
            await self._delete_pod(client, namespace, name, grace_s=0)
            raise

    async def release(self, job: Job, passed: bool) -> None:
        """Passing pods go now; failing ones stay `failed_pod_ttl_s` for forensics (`kubectl
        logs`, `describe`), marked with their expiry for `collect_garbage`."""
        namespace, name = namespace_name(job.user_id, job.chat_id), pod_name(job.job_id)
        client = self._connect()
        if passed:
            await self._delete_pod(client, namespace, name, grace_s=None)
            return
        expires = {EXPIRES_AT: rfc3339(time.time() + self.failed_pod_ttl_s)}
        try:
            await client.set(Pod, name, namespace=namespace, annotations=expires)
        except httpx2.HTTPError as exc:
            if not _not_found(exc):
                log.warning("could not mark pod %s/%s for expiry: %s", namespace, name, exc)

    def describe(self) -> dict[str, str]:
        return {
            "executor": self.name,
            "isolation": (
                "a pod per commit (restricted pod security, no service account token, default-deny"
                " network policy, CPU and memory limits) in a namespace per user session"
            ),
            "templates": str(self.templates_dir),
            "cluster": self._client.config.cluster.server if self._client else "not connected yet",
        }

    async def aclose(self) -> None:
        if self._gc_task is not None:
            self._gc_task.cancel()
            await asyncio.wait({self._gc_task})
            self._gc_task = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ------------------------------------------------------------ manifests and sessions

    def image_for(self, project_type: str) -> str:
        return self.image_overrides.get(project_type) or default_image(
            project_type, self.image_prefix
        )

    def manifests(self, job: Job, template: Template, now: float | None = None) -> list[Manifest]:
        """What `run` applies for `job`, in order (`committee k8s render` prints these)."""
        options = PodOptions(
            image=self.image_for(job.project_type),
            git_secret=self.git_credentials_secret is not None,
            startup_allowance_s=self.timing.startup_allowance_s,
        )
        moment = time.time() if now is None else now
        return render(job, template, options, self.session_policy, moment)

    async def _ensure_session(
        self, client: AsyncClient, template: Template, session: Sequence[Manifest]
    ) -> None:
        """The namespace is applied every time (its last-used mark); the rest once per namespace
        (recognised by uid, so a namespace deleted and recreated is set up again) and type."""
        name = session[0]["metadata"]["name"]
        with _api(f"apply namespace {name}"):
            namespace = await client.apply(
                cast(Namespace, Namespace.from_dict(session[0])), **_APPLY
            )
        if _meta(namespace).deletionTimestamp is not None:
            raise TemporaryExecutorError(f"namespace {name} is being deleted; try again shortly")
        key = (_meta(namespace).uid or name, template.project_type)
        if key in self._ready:
            return
        for manifest in session[1:]:
            with _api(f"apply {manifest['kind']} {manifest['metadata']['name']} in {name}"):
                await client.apply(codecs.from_dict(manifest), **_APPLY)
        if self.git_credentials_secret:
            await self._copy_git_secret(client, name, self.git_credentials_secret)
        self._ready.add(key)

    async def _copy_git_secret(self, client: AsyncClient, namespace: str, source: str) -> None:
        """Pods can only mount Secrets of their own namespace: copy the server's into the
        session's. The data is never logged nor put into a pod spec."""
        with _api(f"read secret {source}"):
            secret = await client.get(Secret, source, namespace=client.namespace)
        data = secret.data or {}
        if GIT_SECRET_KEY not in data:
            raise ExecutorError(f"secret {source} has no {GIT_SECRET_KEY!r} key")
        labels = {MANAGED_BY: COMMITTEE}
        meta = ObjectMeta(name=GIT_SECRET_NAME, namespace=namespace, labels=labels)
        copy = Secret(metadata=meta, type="Opaque", data={GIT_SECRET_KEY: data[GIT_SECRET_KEY]})
        with _api(f"copy secret {source} into {namespace}"):
            await client.apply(copy, **_APPLY)

    # ------------------------------------------------------------ garbage collection

    async def collect_garbage(self, now: float | None = None) -> list[str]:
        """Delete expired pods, then idle namespaces that hold no pod; says what went."""
        moment = time.time() if now is None else now
        client = self._connect()
        removed, occupied = await self._collect_pods(client, moment)
        with _api("list committee's namespaces"):
            namespaces = [n async for n in client.list(Namespace, labels=_OURS)]
        for space in namespaces:
            name = _meta(space).name or ""
            if name not in occupied and _namespace_idle(space, moment, self.namespace_ttl_s):
                with _api(f"delete namespace {name}"):
                    await client.delete(Namespace, name)
                self._ready = {k for k in self._ready if k[0] != _meta(space).uid}
                removed.append(f"namespace {name}")
        return removed

    async def _collect_pods(self, client: AsyncClient, now: float) -> tuple[list[str], set[str]]:
        """Delete expired pods; returns what went and the namespaces that still hold pods."""
        with _api("list committee's pods"):
            pods = [p async for p in client.list(Pod, namespace=ALL_NS, labels=_OURS)]
        removed: list[str] = []
        occupied = {namespace for namespace, _ in self._active}
        for pod in pods:
            namespace, name = _meta(pod).namespace or "", _meta(pod).name or ""
            if (namespace, name) in self._active or not _pod_expired(
                pod, now, self.failed_pod_ttl_s
            ):
                occupied.add(namespace)
            elif await self._delete_pod(client, namespace, name, grace_s=None):
                removed.append(f"pod {namespace}/{name}")
        return removed, occupied

    def _start_gc(self) -> None:
        if self.timing.gc_interval_s is not None and self._gc_task is None:
            self._gc_task = asyncio.create_task(self._gc_forever(self.timing.gc_interval_s))

    async def _gc_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                removed = await self.collect_garbage()
            except Exception:
                log.exception("garbage collection of committee's pods and namespaces failed")
            else:
                if removed:
                    log.info("garbage collection removed %s", ", ".join(removed))

    # ------------------------------------------------------------ plumbing

    def _connect(self) -> AsyncClient:
        if self._client is None:
            try:
                self._client = self._client_factory()
            except (ConfigError, OSError) as exc:
                raise ExecutorError(f"no usable Kubernetes configuration: {exc}") from exc
        return self._client

    def _default_client(self) -> AsyncClient:
        """In-cluster service account, else $KUBECONFIG, else ~/.kube/config, as kubectl."""
        config = KubeConfig.from_file(self.kubeconfig) if self.kubeconfig else None
        return AsyncClient(config=config, field_manager=FIELD_MANAGER)

    async def _delete_pod(
        self, client: AsyncClient, namespace: str, name: str, grace_s: int | None
    ) -> bool:
        """Best effort: failures are logged, as the pod will be collected later anyway."""
        try:
            await client.delete(Pod, name, namespace=namespace, grace_period=grace_s)
        except httpx2.HTTPError as exc:
            if not _not_found(exc):
                log.warning("could not delete pod %s/%s: %s", namespace, name, exc)
            return False
        return True


_APPLY: dict[str, Any] = {"field_manager": FIELD_MANAGER, "force": True}
_OURS: LabelSelector = {MANAGED_BY: COMMITTEE}


@dataclass
class _PodRun:
    """Watching one pod from creation to Outcome."""

    client: AsyncClient
    job: Job
    emit: Emit
    namespace: str
    name: str
    timing: Timing
    deadline_s: float  # since creation: past this, Kubernetes failed to enforce the deadline
    created: float = field(default_factory=time.monotonic)
    tail: Tail = field(default_factory=Tail)
    emitted: int = 0  # lines of the test container's log emitted so far
    _note: str = ""

    async def supervise(self) -> Outcome:
        verdict = await self._poll(lambda v: v.state != "pending")
        if verdict.state != "failed":
            await self.emit("system", ["test container started"])
            verdict = await self._follow_to_end()
        if verdict.state == "finished":
            return await self._finished(verdict)
        return await self._failed(verdict)

    # ------------------------------------------------------------ status

    async def _poll(self, done: Callable[[Verdict], bool]) -> Verdict:
        while True:
            pod = await self._get()
            verdict = assess(pod, time.monotonic() - self.created, self.timing)
            if verdict.note and verdict.note != self._note:
                self._note = verdict.note
                await self.emit("system", [verdict.note])
            if done(verdict):
                return verdict
            if time.monotonic() - self.created > self.deadline_s:
                return _failed("the pod ran past its deadline and was not stopped", timed_out=True)
            await asyncio.sleep(self.timing.poll_s)

    async def _get(self) -> Pod | None:
        """The pod, None if it is gone; API hiccups are retried, not fatal."""
        failures = 0
        while True:
            try:
                return await self.client.get(Pod, self.name, namespace=self.namespace)
            except httpx2.HTTPError as exc:
                if _not_found(exc):
                    return None
                failures += 1
                if failures > self.timing.api_retries:
                    raise TemporaryExecutorError(f"lost the Kubernetes API: {exc}") from exc
            await asyncio.sleep(self.timing.poll_s)

    async def _container(self, name: str) -> ContainerStatus | None:
        pod = await self._get()
        statuses = pod.status.containerStatuses if pod and pod.status else None
        return _find(statuses, name)

    # ------------------------------------------------------------ logs

    async def _follow_to_end(self) -> Verdict:
        follower = asyncio.create_task(self._follow())
        try:
            verdict = await self._poll(lambda v: v.ended)
            await asyncio.wait({follower}, timeout=self.timing.log_drain_s)
            if follower.done():
                follower.result()
            return verdict
        finally:
            follower.cancel()
            await asyncio.wait({follower})

    async def _follow(self) -> None:
        """Stream the test container's log live. A stream that breaks, or ends while the
        container still runs, is reopened from the start, skipping the lines already emitted.
        Only a broken stream is worth a word: one that ends cleanly before the container is seen
        terminated is usually the status lagging behind the exit."""
        for _ in range(self.timing.log_reconnects + 1):
            try:
                await self._stream()
            except httpx2.HTTPError as exc:
                await self.emit("system", [f"the log stream broke ({exc}); reconnecting"])
            else:
                test = await self._container(TEST_CONTAINER)
                if test is None or (test.state and test.state.terminated):
                    return
            await asyncio.sleep(self.timing.poll_s)
        await self.emit("system", ["gave up following the log; the result is still collected"])

    async def _stream(self) -> None:
        splitter = LineSplitter()
        seen = 0
        stream = self.client.log(
            self.name, namespace=self.namespace, container=TEST_CONTAINER, follow=True
        )
        async for chunk in stream:
            seen = await self._emit_new(splitter.feed(chunk.encode()), seen)
        await self._emit_new(splitter.flush(), seen)

    async def _emit_new(self, lines: list[str], seen: int) -> int:
        """Emit what this stream shows beyond the lines already emitted by earlier streams."""
        fresh = lines[max(0, self.emitted - seen) :]
        if fresh:
            self.emitted += len(fresh)
            self.tail.extend(fresh)
            await self.emit("stdout", fresh)
        return seen + len(lines)

    async def _read_log(self, container: str) -> str:
        stream = self.client.log(self.name, namespace=self.namespace, container=container)
        return "".join([chunk async for chunk in stream])

    # ------------------------------------------------------------ outcomes

    async def _finished(self, verdict: Verdict) -> Outcome:
        await self.emit("system", [f"test container exited with code {verdict.exit_code}"])
        junit, problems = await self._collect_junit()
        return Outcome(
            exit_code=verdict.exit_code,
            junit_xml=junit,
            output_tail=self.tail.text(),
            diagnostics=problems,
        )

    async def _collect_junit(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The collect container prints the JUnit files once the test container is done."""
        give_up = time.monotonic() + self.timing.collect_timeout_s
        while True:
            collect = await self._container(COLLECT_CONTAINER)
            if collect is None or (collect.state and collect.state.terminated):
                break
            if time.monotonic() > give_up:
                return (), ("the collect container did not finish: JUnit results not read",)
            await asyncio.sleep(self.timing.poll_s)
        try:
            return parse_collected(await self._read_log(COLLECT_CONTAINER))
        except httpx2.HTTPError as exc:
            return (), (f"could not read the JUnit results: {exc}",)

    async def _failed(self, verdict: Verdict) -> Outcome:
        error = verdict.error
        diagnostics = await self._events()
        if verdict.explained_by:
            diagnostics = (*await self._log_tail(verdict.explained_by), *diagnostics)
        await self.emit("system", [error])
        return Outcome(
            exit_code=verdict.exit_code,
            timed_out=verdict.timed_out,
            error=error,
            output_tail=self.tail.text(),
            diagnostics=diagnostics,
        )

    async def _log_tail(self, container: str) -> tuple[str, ...]:
        try:
            lines = (await self._read_log(container)).splitlines()
        except httpx2.HTTPError as exc:
            return (f"could not read the {container} container's log: {exc}",)
        return tuple(f"{container}: {line}" for line in lines[-20:])

    async def _events(self) -> tuple[str, ...]:
        """The pod's Kubernetes events, oldest first, as `kubectl describe` shows them."""
        fields: FieldSelector = {"involvedObject.name": self.name}
        try:
            events = [
                e async for e in self.client.list(Event, namespace=self.namespace, fields=fields)
            ]
        except httpx2.HTTPError as exc:
            return (f"could not list the pod's events: {exc}",)
        return tuple(_describe_event(e) for e in events)


# ---------------------------------------------------------------- reading a pod's status


def assess(pod: Pod | None, age_s: float, timing: Timing) -> Verdict:
    """What the pod's status means for the job: pending, running, finished or failed (why)."""
    if pod is None:
        return _failed(
            "PodDeleted: the pod disappeared (deleted by someone else, or its node was lost)"
        )
    status = pod.status or PodStatus()
    failure = _pod_failure(status)
    if failure:
        return failure
    test = _find(status.containerStatuses, TEST_CONTAINER)
    if test and test.state and test.state.terminated:
        return _terminated(test.state.terminated)
    stuck = _stuck(status)
    if stuck:
        return stuck
    if test and test.state and test.state.running:
        return Verdict("running")
    return _pending(pod, status, age_s, timing)


def _pod_failure(status: PodStatus) -> Verdict | None:
    message = status.message or ""
    if status.reason == "DeadlineExceeded":
        error = f"DeadlineExceeded: {message or 'the pod ran past its deadline'}"
        return _failed(error, timed_out=True)
    if status.reason:
        return _failed(f"{status.reason}: {message}".rstrip(": "))
    if status.phase == "Unknown":
        return _failed(f"NodeLost: {message or 'the node running the pod stopped reporting'}")
    for condition in status.conditions or []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            return _failed(f"{condition.reason}: {condition.message or ''}".rstrip(": "))
    return None


def _terminated(ended: ContainerStateTerminated) -> Verdict:
    if ended.reason == "OOMKilled":
        error = "OOMKilled: the test container ran out of memory"
        return _failed(f"{error} (exit code {ended.exitCode})", ended.exitCode)
    if ended.reason in CANNOT_START:
        return _failed(f"{ended.reason}: {ended.message or ''}".rstrip(": "), ended.exitCode)
    return Verdict("finished", exit_code=ended.exitCode)


def _stuck(status: PodStatus) -> Verdict | None:
    for container in [*(status.initContainerStatuses or []), *(status.containerStatuses or [])]:
        waiting = container.state.waiting if container.state else None
        if waiting and waiting.reason in STUCK:
            detail = f" ({waiting.message})" if waiting.message else ""
            return _failed(f"{waiting.reason}: container {container.name}{detail}")
    fetch = _find(status.initContainerStatuses, FETCH_CONTAINER)
    ended = fetch.state.terminated if fetch and fetch.state else None
    if ended and ended.exitCode != 0:
        error = f"FetchFailed: could not fetch the commit (git exit code {ended.exitCode})"
        return Verdict("failed", error=error, explained_by=FETCH_CONTAINER)
    if status.phase == "Failed":
        return _failed(f"PodFailed: {status.message or 'an init container failed'}")
    return None


def _pending(pod: Pod, status: PodStatus, age_s: float, timing: Timing) -> Verdict:
    scheduled = next((c for c in status.conditions or [] if c.type == "PodScheduled"), None)
    if scheduled and scheduled.status == "False" and scheduled.reason == "Unschedulable":
        if age_s >= timing.unschedulable_grace_s:
            return _failed(f"Unschedulable: {scheduled.message or 'no node fits the pod'}")
        return Verdict("pending", note="waiting for a node that fits the pod")
    if age_s >= timing.pending_timeout_s:
        return _failed(f"PodPending: the pod did not start within {timing.pending_timeout_s:.0f} s")
    fetch = _find(status.initContainerStatuses, FETCH_CONTAINER)
    if fetch and fetch.state and fetch.state.running:
        return Verdict("pending", note="fetching the commit")
    node = pod.spec.nodeName if pod.spec else None
    return Verdict("pending", note=f"scheduled on node {node}" if node else "")


def _meta(obj: Pod | Namespace) -> ObjectMeta:
    return obj.metadata or ObjectMeta()


def _find(statuses: list[ContainerStatus] | None, name: str) -> ContainerStatus | None:
    return next((s for s in statuses or [] if s.name == name), None)


def _describe_event(event: Event) -> str:
    count = f" (x{event.count})" if event.count and event.count > 1 else ""
    return f"event: {event.type or ''} {event.reason or ''}: {event.message or ''}{count}".strip()


def _pod_expired(pod: Pod, now: float, ttl_s: float) -> bool:
    """Marked pods expire at their mark; unmarked ones (their server died before `release`)
    `ttl_s` after their deadline, by when they have surely ended."""
    annotations = _meta(pod).annotations or {}
    if EXPIRES_AT in annotations:
        expires = parse_rfc3339(annotations[EXPIRES_AT])
        return expires is not None and expires <= now
    created = _meta(pod).creationTimestamp
    deadline = pod.spec.activeDeadlineSeconds if pod.spec else None
    start = created.timestamp() if created else now
    return start + (deadline or 0) + ttl_s <= now


def _namespace_idle(namespace: Namespace, now: float, ttl_s: float) -> bool:
    metadata = _meta(namespace)
    if metadata.deletionTimestamp is not None:
        return False
    last = parse_rfc3339((metadata.annotations or {}).get(LAST_USED, ""))
    if last is None and metadata.creationTimestamp is not None:
        last = metadata.creationTimestamp.timestamp()
    return last is not None and last + ttl_s <= now


def _not_found(exc: Exception) -> bool:
    return isinstance(exc, ApiError) and exc.status.code == 404


@contextlib.contextmanager
def _api(action: str) -> Iterator[None]:
    """Kubernetes' refusals become ExecutorError; what may pass (unreachable API, overload,
    a full quota) becomes TemporaryExecutorError."""
    try:
        yield
    except ApiError as exc:
        message = f"Kubernetes refused to {action}: {exc.status.message}"
        code = exc.status.code or 0
        if code == 429 or code >= 500 or "exceeded quota" in (exc.status.message or ""):
            raise TemporaryExecutorError(message) from exc
        raise ExecutorError(message) from exc
    except httpx2.HTTPError as exc:
        raise TemporaryExecutorError(f"could not reach Kubernetes to {action}: {exc}") from exc
