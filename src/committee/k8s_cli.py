"""`committee k8s render` and `committee k8s gc`: the Kubernetes executor from the command line.

`render` prints, as YAML documents, exactly what the executor would apply for one job, without
a cluster; `gc` deletes expired pods and idle namespaces now instead of at the next timer tick.
lightkube is only imported by `gc`, so `render` works without the kubernetes extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from committee.errors import BadInput
from committee.executors import Job, Limits
from committee.k8s_manifests import (
    GIT_SECRET_ENV,
    PodOptions,
    SessionPolicy,
    default_image,
    default_templates_dir,
    load_template,
    render,
)

if TYPE_CHECKING:
    from committee.executors.kubernetes import KubernetesExecutor

DEFAULT_REPO = "https://example.com/repository.git"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k8s = subparsers.add_parser("k8s", help="Kubernetes executor tools (render, gc)")
    commands = k8s.add_subparsers(dest="k8s_command", required=True, metavar="{render,gc}")
    _add_render(commands)
    _add_gc(commands)


def _add_render(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "render",
        help="print the manifests the executor would apply for one job",
        description="Print, as YAML documents, the namespace, quota, limit range, network "
        "policies and pod the Kubernetes executor would apply. Example: committee k8s render "
        "--project-type python -- pytest -q",
    )
    parser.add_argument("--project-type", required=True)
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument("--repo-url", default=DEFAULT_REPO)
    parser.add_argument("--user-id", default="local")
    parser.add_argument("--chat-id", default="local")
    parser.add_argument("--templates-dir", type=Path, default=None)
    parser.add_argument("--image", help="image for the pod (default: committee-<type>:<version>)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--network", action="store_true", help="the job may reach the network")
    parser.add_argument(
        "--git-credentials-secret",
        default=os.environ.get(GIT_SECRET_ENV),
        help=f"mount the git credentials Secret (default: ${GIT_SECRET_ENV})",
    )
    parser.add_argument("--command", dest="command_text", help="the test command, as one string")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    parser.set_defaults(func=run_render)


def _add_gc(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "gc",
        help="delete expired test pods and idle session namespaces now",
    )
    parser.add_argument("--kubeconfig", type=Path, default=None)
    parser.add_argument("--failed-pod-ttl", type=float, default=3600.0, help="seconds")
    parser.add_argument("--namespace-ttl", type=float, default=86400.0, help="seconds")
    parser.set_defaults(func=run_gc)


def command_of(args: argparse.Namespace) -> str:
    """`--command "pytest -q"`, or the words after `--` (one word is taken as written)."""
    if args.command_text:
        return str(args.command_text)
    if isinstance(args.command, str):
        return args.command
    words = [str(w) for w in args.command or []]
    if words[:1] == ["--"]:
        words = words[1:]
    if len(words) == 1:
        return words[0]
    if words:
        return shlex.join(words)
    raise BadInput("give the test command after `--` or with --command")


def run_render(args: argparse.Namespace) -> int:
    templates_dir = args.templates_dir or default_templates_dir()
    template = load_template(templates_dir, args.project_type)
    job = Job(
        job_id="render",
        run_id="render",
        repo_url=args.repo_url,
        mirror=Path(),
        commit=args.commit,
        command=command_of(args),
        project_type=args.project_type,
        user_id=args.user_id,
        chat_id=args.chat_id,
        timeout_s=args.timeout,
        network=args.network,
        limits=Limits(),
    )
    options = PodOptions(
        image=args.image or default_image(args.project_type),
        git_secret=bool(args.git_credentials_secret),
    )
    manifests = render(job, template, options, SessionPolicy(), now=time.time())
    yaml.safe_dump_all(manifests, sys.stdout, sort_keys=False)
    return 0


def run_gc(args: argparse.Namespace) -> int:
    from committee.executors.kubernetes import KubernetesExecutor, Timing

    executor = KubernetesExecutor(
        kubeconfig=args.kubeconfig,
        failed_pod_ttl_s=args.failed_pod_ttl,
        namespace_ttl_s=args.namespace_ttl,
        timing=Timing(gc_interval_s=None),
    )
    removed = asyncio.run(_collect(executor))
    for item in removed:
        print(f"deleted {item}")
    print(f"{len(removed)} object(s) deleted")
    return 0


async def _collect(executor: KubernetesExecutor) -> list[str]:
    try:
        return await executor.collect_garbage()
    finally:
        await executor.aclose()
