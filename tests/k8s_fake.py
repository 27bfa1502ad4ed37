"""A fake Kubernetes API server on 127.0.0.1, speaking the paths the Kubernetes executor uses.

Objects live in memory. A pod, once created, follows a scripted `Scenario`: its status over time
(phases, container states, reasons), each container's log output over time, and its events. A
followed log ends when the scenario's status says the container terminated, as the kubelet's does;
it can also be made to drop mid-stream. Every request and every delete is recorded, so tests
assert on what the executor did, through the real lightkube client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from committee.executors import Job

Obj = dict[str, Any]

_KINDS = {
    "namespaces": ("v1", "Namespace"),
    "pods": ("v1", "Pod"),
    "events": ("v1", "Event"),
    "secrets": ("v1", "Secret"),
    "resourcequotas": ("v1", "ResourceQuota"),
    "limitranges": ("v1", "LimitRange"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
}


def make_job(**changes: Any) -> Job:
    """A job for the Kubernetes tests: a remote repository, user 42 in chat 7."""
    fields: dict[str, Any] = {
        "job_id": "r1-0",
        "run_id": "r1",
        "repo_url": "https://git.example.com/team/app.git",
        "mirror": Path("/nonexistent"),
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "command": "python -m pytest -q",
        "project_type": "python",
        "user_id": "42",
        "chat_id": "7",
        "timeout_s": 60.0,
    }
    return Job(**{**fields, **changes})


@dataclass
class Scenario:
    """What a pod does. `statuses`: (seconds after creation, pod status); `logs`: container →
    (seconds after creation, text) chunks. `drop_log` makes the first followed stream of the test
    container fail after `drop_after` chunks: "abort" breaks the connection, "close" ends it
    early."""

    statuses: list[tuple[float, Obj]]
    logs: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    events: list[Obj] = field(default_factory=list)
    drop_log: Literal["abort", "close"] | None = None
    drop_after: int = 0
    vanish_at: float | None = None  # the pod disappears, as when its node is lost


@dataclass
class _Pod:
    scenario: Scenario
    created: float
    follows: int = 0


class FakeKube:
    def __init__(self, scenario: Callable[[Obj], Scenario] | None = None) -> None:
        self.objects: dict[tuple[str, str | None, str], Obj] = {}
        self.requests: list[tuple[str, str]] = []
        self.deleted: list[tuple[str, str | None, str]] = []
        self.refuse: dict[str, tuple[int, str]] = {}  # plural → (code, message) for creations
        self.scenario = scenario or (lambda pod: Scenario(statuses=[(0.0, {"phase": "Pending"})]))
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._versions = itertools.count(1)
        self._stopping = asyncio.Event()
        self.app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PATCH", "DELETE"])]
        )

    # ------------------------------------------------------------ what tests look at

    def stored(self, plural: str) -> list[Obj]:
        return [o for (p, _, _), o in self.objects.items() if p == plural]

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    def put(self, plural: str, namespace: str | None, obj: Obj) -> Obj:
        """Store an object as if someone else had created it."""
        return self._store(plural, namespace, obj)

    # ------------------------------------------------------------ HTTP

    async def _handle(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path + "?" + request.url.query))
        plural, namespace, name, sub = _parse(request.url.path)
        if sub == "log":
            return await self._log(request, namespace or "", name or "")
        if request.method == "GET" and name is None:
            return self._list(request, plural, namespace)
        if request.method == "GET":
            return self._get(plural, namespace, name or "")
        if request.method == "POST":
            return self._create(plural, namespace, await request.json())
        if request.method == "PATCH":
            return await self._patch(request, plural, namespace, name or "")
        return self._delete(plural, namespace, name or "")

    def _get(self, plural: str, namespace: str | None, name: str) -> Response:
        obj = self._current(plural, namespace, name)
        return _not_found(plural, name) if obj is None else JSONResponse(obj)

    def _list(self, request: Request, plural: str, namespace: str | None) -> Response:
        labels = _selector(request.query_params.get("labelSelector", ""))
        fields = _selector(request.query_params.get("fieldSelector", ""))
        if plural == "events":
            self._materialise_events()
        items = []
        for p, ns, name in list(self.objects):
            obj = self._current(p, ns, name)
            if p != plural or obj is None or (namespace and ns != namespace):
                continue
            if _matches(obj, labels, fields):
                items.append(obj)
        api_version, kind = _KINDS[plural]
        body = {"apiVersion": api_version, "kind": kind + "List", "items": items}
        return JSONResponse({**body, "metadata": {"resourceVersion": str(next(self._versions))}})

    def _create(self, plural: str, namespace: str | None, body: Obj) -> Response:
        name = body["metadata"]["name"]
        if plural in self.refuse:
            code, message = self.refuse[plural]
            return _status(code, "Forbidden", message)
        if (plural, namespace, name) in self.objects:
            return _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        if namespace and ("namespaces", None, namespace) not in self.objects:
            return _status(404, "NotFound", f'namespaces "{namespace}" not found')
        obj = self._store(plural, namespace, body)
        if plural == "pods":
            self._pods[(namespace or "", name)] = _Pod(self.scenario(obj), time.monotonic())
        return JSONResponse(self._current(plural, namespace, name) or obj, status_code=201)

    async def _patch(
        self, request: Request, plural: str, namespace: str | None, name: str
    ) -> Response:
        body = json.loads(await request.body())
        existing = self.objects.get((plural, namespace, name))
        if existing is None and "apply-patch" not in request.headers["content-type"]:
            return _not_found(plural, name)
        if existing is None:
            return self._create(plural, namespace, body)
        _merge(existing, body)
        existing["metadata"]["resourceVersion"] = str(next(self._versions))
        return JSONResponse(self._current(plural, namespace, name) or existing)

    def _delete(self, plural: str, namespace: str | None, name: str) -> Response:
        if self.objects.pop((plural, namespace, name), None) is None:
            return _not_found(plural, name)
        self.deleted.append((plural, namespace, name))
        if plural == "namespaces":
            for key in [k for k in self.objects if k[1] == name]:
                del self.objects[key]
        return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    # ------------------------------------------------------------ objects

    def _store(self, plural: str, namespace: str | None, body: Obj) -> Obj:
        api_version, kind = _KINDS[plural]
        obj = {"apiVersion": api_version, "kind": kind, **body}
        meta = obj.setdefault("metadata", {})
        meta.update(uid=str(uuid.uuid4()), resourceVersion=str(next(self._versions)))
        meta.setdefault("creationTimestamp", _now())
        if namespace:
            meta["namespace"] = namespace
        if plural == "namespaces":
            obj["status"] = {"phase": "Active"}
        self.objects[(plural, namespace, meta["name"])] = obj
        return obj

    def _current(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        obj = self.objects.get((plural, namespace, name))
        if obj is None or plural != "pods":
            return obj
        pod = self._pods.get((namespace or "", name))
        if pod is None:
            return obj
        age = time.monotonic() - pod.created
        if pod.scenario.vanish_at is not None and age >= pod.scenario.vanish_at:
            return None
        status = next(s for at, s in reversed(pod.scenario.statuses) if at <= age)
        return {**obj, "status": status}

    def _materialise_events(self) -> None:
        for (namespace, name), pod in self._pods.items():
            for i, event in enumerate(pod.scenario.events):
                meta = {"name": f"{name}.{i}", "namespace": namespace}
                involved = {"kind": "Pod", "name": name, "namespace": namespace}
                obj = {"metadata": meta, "involvedObject": involved, **event}
                self.objects[("events", namespace, meta["name"])] = obj

    # ------------------------------------------------------------ logs

    async def _log(self, request: Request, namespace: str, name: str) -> Response:
        pod = self._pods.get((namespace, name))
        if pod is None or self._current("pods", namespace, name) is None:
            return _not_found("pods", name)
        container = request.query_params.get("container", "test")
        started, ended = _container_times(pod.scenario, container)
        age = time.monotonic() - pod.created
        if started is None or age < started:
            message = f'container "{container}" in pod "{name}" is waiting to start'
            return _status(400, "BadRequest", message)
        chunks = pod.scenario.logs.get(container, [])
        if request.query_params.get("follow") != "true":
            return Response(
                "".join(text for at, text in chunks if at <= age), media_type="text/plain"
            )
        drop = None
        if container == "test" and pod.follows == 0 and pod.scenario.drop_log:
            drop = pod.scenario.drop_log
        pod.follows += 1 if container == "test" else 0
        stream = self._follow(request, pod, namespace, name, chunks, ended, drop)
        return StreamingResponse(stream, media_type="text/plain")

    async def _follow(
        self,
        request: Request,
        pod: _Pod,
        namespace: str,
        name: str,
        chunks: list[tuple[float, str]],
        ended: float | None,
        drop: str | None,
    ) -> AsyncIterator[bytes]:
        scenario = pod.scenario
        for sent, (at, text) in enumerate(chunks):
            if ended is not None and at > ended:
                return  # the container was killed before it could print the rest
            if drop and sent == scenario.drop_after:
                if drop == "abort":
                    raise ConnectionAbortedError("fake log stream dropped")
                return
            if not await self._until(request, pod, namespace, name, at):
                return
            yield text.encode()
        await self._until(request, pod, namespace, name, ended)

    async def _until(
        self, request: Request, pod: _Pod, namespace: str, name: str, at: float | None
    ) -> bool:
        """Wait until `at` seconds after creation (forever if None); False if the pod went away."""
        while at is None or time.monotonic() - pod.created < at:
            gone = self._current("pods", namespace, name) is None
            if gone or self._stopping.is_set() or await request.is_disconnected():
                return False
            await asyncio.sleep(0.01)
        return True

    # ------------------------------------------------------------ running it

    @contextlib.asynccontextmanager
    async def running(self, tmp_path: Path) -> AsyncIterator[Path]:
        """Serve on a free port of 127.0.0.1; yields the path of a kubeconfig pointing at it."""
        # A socket already listening: clients may connect before uvicorn has started. Without
        # TCP_NODELAY (which uvicorn sets only on sockets it binds itself) every response
        # would wait ~40 ms for a delayed ACK.
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(self.app, log_level="critical", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(_kubeconfig(f"http://127.0.0.1:{port}")))
        try:
            yield kubeconfig
        finally:
            self._stopping.set()
            server.should_exit = True
            await task
            sock.close()


# ---------------------------------------------------------------- helpers


def _kubeconfig(server: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }


def _parse(path: str) -> tuple[str, str | None, str | None, str | None]:
    """/api/v1/[namespaces/NS/]PLURAL[/NAME[/SUB]] and /apis/GROUP/VERSION/... alike."""
    parts = path.strip("/").split("/")
    parts = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = None
    if len(parts) >= 3 and parts[0] == "namespaces":
        namespace, parts = parts[1], parts[2:]
    padded = [*parts, None, None]
    return parts[0], namespace, padded[1], padded[2]


def _selector(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in text.split(",") if "=" in item]
    return {key: value for key, value in pairs}


def _matches(obj: Obj, labels: dict[str, str], fields: dict[str, str]) -> bool:
    own = obj.get("metadata", {}).get("labels") or {}
    if any(own.get(key) != value for key, value in labels.items()):
        return False
    for path, value in fields.items():
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            return False
    return True


def _merge(target: Obj, patch: Obj) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def _container_times(scenario: Scenario, container: str) -> tuple[float | None, float | None]:
    """When the container first ran, and when it terminated, according to the scenario."""
    started = ended = None
    for at, status in scenario.statuses:
        states = status.get("containerStatuses", []) + status.get("initContainerStatuses", [])
        state = next((s["state"] for s in states if s["name"] == container), {})
        if started is None and ("running" in state or "terminated" in state):
            started = at
        if ended is None and "terminated" in state:
            ended = at
    return started, ended


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status(code: int, reason: str, message: str) -> Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    body.update(message=message, reason=reason, code=code)
    return JSONResponse(body, status_code=code)


def _not_found(plural: str, name: str) -> Response:
    return _status(404, "NotFound", f'{plural} "{name}" not found')


# ---------------------------------------------------------------- building scenarios


def waiting(name: str, reason: str, message: str = "") -> Obj:
    return _container(name, {"waiting": {"reason": reason, "message": message}})


def running(name: str) -> Obj:
    return _container(name, {"running": {"startedAt": _now()}})


def terminated(name: str, exit_code: int, reason: str = "") -> Obj:
    reason = reason or ("Completed" if exit_code == 0 else "Error")
    return _container(name, {"terminated": {"exitCode": exit_code, "reason": reason}})


def _container(name: str, state: Obj) -> Obj:
    ready = "running" in state
    return {
        "name": name,
        "image": "img",
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "state": state,
    }


def status(
    phase: str, init: list[Obj] | None = None, main: list[Obj] | None = None, **extra: Any
) -> Obj:
    return {
        "phase": phase,
        "initContainerStatuses": init or [],
        "containerStatuses": main or [],
        **extra,
    }


def event(reason: str, message: str, kind: str = "Warning", count: int = 1) -> Obj:
    return {"type": kind, "reason": reason, "message": message, "count": count}


def junit_log(files: dict[str, str]) -> str:
    """What the collect container prints for these JUnit files."""
    import base64
    import gzip

    out = []
    for name, text in files.items():
        encoded = base64.encodebytes(gzip.compress(text.encode())).decode()
        out.append(f"committee-junit-begin {name}\n{encoded}committee-junit-end\n")
    return "".join(out) + "committee-junit-done\n"


def scripted_run(
    output: list[str],
    exit_code: int = 0,
    junit: dict[str, str] | None = None,
    step: float = 0.02,
    reason: str = "",
) -> Scenario:
    """Pending, fetching, running while `output` is printed, then the test container exits with
    `exit_code` and the collect container prints `junit`."""
    fetching = [running("fetch")]
    fetched = [terminated("fetch", 0)]
    waiting_main = [waiting("test", "PodInitializing"), waiting("collect", "PodInitializing")]
    end = step * (3 + len(output))
    phase = "Succeeded" if exit_code == 0 else "Failed"
    statuses = [
        (0.0, status("Pending")),
        (step, status("Pending", fetching, waiting_main)),
        (2 * step, status("Running", fetched, [running("test"), running("collect")])),
        (
            end,
            status("Running", fetched, [terminated("test", exit_code, reason), running("collect")]),
        ),
        (
            end + step,
            status(
                phase, fetched, [terminated("test", exit_code, reason), terminated("collect", 0)]
            ),
        ),
    ]
    lines = [(2 * step + (i + 1) * step, line) for i, line in enumerate(output)]
    logs = {
        "test": lines,
        "collect": [(end + step, junit_log(junit or {}))],
        "fetch": [(step, "checked out\n")],
    }
    return Scenario(statuses=statuses, logs=logs)
