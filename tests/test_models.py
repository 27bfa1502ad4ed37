"""The request model as clients fill it in: the original design's config.json gives numeric ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from committee.config import describe_validation_error
from committee.messages import Submit
from committee.models import RunRequest

FIELDS = {"repo_url": "https://example.org/app.git", "test_command": "pytest -q"}


def test_whole_number_ids_become_strings() -> None:
    request = RunRequest.model_validate_json(
        '{"repo_url": "x", "test_command": "t", "user_id": 42, "chat_id": -7}'
    )
    assert (request.user_id, request.chat_id) == ("42", "-7")
    assert RunRequest(**FIELDS, user_id="alice").user_id == "alice"


@pytest.mark.parametrize(
    ("value", "kind"),
    [(4.5, "a fractional number"), (None, "null"), (True, "a boolean"), ([1], "an array")],
)
def test_other_ids_are_refused_saying_what_they_are(value: object, kind: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunRequest.model_validate({**FIELDS, "chat_id": value})
    assert describe_validation_error(caught.value) == (
        f"invalid request: chat_id: must be a string or a whole number, not {kind}"
    )


def test_ids_keep_their_length_limits() -> None:
    with pytest.raises(ValidationError, match="at most 128"):
        RunRequest.model_validate({**FIELDS, "user_id": 10**130})


def test_submit_takes_the_whole_config_json_and_its_ws_url() -> None:
    submit = Submit.model_validate({**FIELDS, "ws_url": "ws://127.0.0.1:8080/ws", "user_id": 42})
    assert submit.ws_url == "ws://127.0.0.1:8080/ws" and submit.user_id == "42"
    with pytest.raises(ValidationError, match="ws_ulr"):
        Submit.model_validate({**FIELDS, "ws_ulr": "typo"})  # other unknown fields still fail
