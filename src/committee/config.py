"""Where things live and how a request is read from the original design's config.json. Pure."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from committee.errors import BadInput
from committee.models import RunRequest

CONFIG_FIELDS = ("repo_url", "commits", "test_command", "project_type", "user_id", "chat_id")
IGNORED_FIELDS = ("ws_url",)  # used by `committee submit`, meaningless for a local run


def default_data_dir() -> Path:
    if env := os.environ.get("COMMITTEE_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "committee"


def read_config(path: Path) -> dict[str, Any]:
    """The fields of a config.json, as given (unknown keys are an error, to catch typos)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BadInput(f"config file {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise BadInput(f"config file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"config file {path} must hold a JSON object")
    allowed = set(CONFIG_FIELDS) | set(IGNORED_FIELDS) | set(RunRequest.model_fields)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise BadInput(f"config file {path}: unknown field(s) {', '.join(unknown)}")
    return data


def build_request(config: dict[str, Any], overrides: dict[str, Any]) -> RunRequest:
    """Merge config.json fields with command-line flags (flags win) into a validated request."""
    merged = {k: v for k, v in config.items() if k not in IGNORED_FIELDS}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return RunRequest.model_validate(merged)
    except ValidationError as exc:
        raise BadInput(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}" for err in exc.errors()
    ]
    return "invalid request: " + "; ".join(problems)
