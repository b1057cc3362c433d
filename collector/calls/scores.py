"""Scores of answers: what graders and the app's feedback say of a call's quality.

A score comes after its call's row (a grader runs once the answer is complete, feedback
whenever the app sends it), so it is a spool line of its own, ``{"score": {...}}``, loaded
into the ``scores`` table by the same loader, through the same boundary, as the calls. What
the app posts (:class:`Feedback`) is validated by a declared model: the proxy's feedback
endpoint and ``llmtap feedback import`` answer a bad value with the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from collector.storage import schema
from collector.trust.boundary import column_values

__all__ = ["NAME_LIMIT", "SCORE_KEY", "SOURCES", "Feedback", "Score", "Source", "loadable_score"]

#: The key of a spool line that holds a score.
SCORE_KEY = "score"
Source = Literal["grader", "feedback"]
SOURCES: tuple[str, ...] = get_args(Source)
#: Longest score name kept (a grader's name, or what the app calls its feedback).
NAME_LIMIT = 64
#: Longest call id accepted from outside (llmtap's own are 32 hex digits).
CALL_ID_LIMIT = 64


@dataclass(frozen=True, slots=True)
class Score:
    """One score of one call. ``value`` is None when a grader could not score, ``error`` says why."""

    call_id: str
    name: str
    value: float | None
    source: Source
    error: str | None = None
    created_at: float = field(default_factory=time.time)

    def spool_line(self) -> bytes:
        columns = {**asdict(self), "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat()}
        return json.dumps({SCORE_KEY: loadable_score(columns)}).encode() + b"\n"


def loadable_score(data: Any) -> dict[str, Any]:
    """The ``scores`` columns of a spool line's score, each through the boundary; raises
    ValueError for one that cannot be a score (the loader then sets the line aside)."""
    if not isinstance(data, dict):
        raise ValueError("a score must be a JSON object")
    columns = column_values(data, schema.SCORES)
    if not columns["call_id"] or not columns["name"] or not columns["created_at"]:
        raise ValueError("a score needs a call_id, a name and a valid created_at")
    if columns["source"] not in SOURCES:
        raise ValueError(f"a score's source is one of {', '.join(SOURCES)}")
    value = columns["value"]
    if value is not None and not 0 <= value <= 1:
        raise ValueError("a score's value is from 0 to 1")
    if value is None and not columns["error"]:
        raise ValueError("a score without a value says why (error)")
    columns["call_id"] = columns["call_id"][:CALL_ID_LIMIT]
    columns["name"] = columns["name"][:NAME_LIMIT]
    return columns


class Feedback(BaseModel):
    """What the app posts about one call (``{"call_id": ..., "name": ..., "value": ...}``), and
    each line of a file ``llmtap feedback import`` reads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    call_id: Annotated[
        str, StringConstraints(min_length=1, max_length=CALL_ID_LIMIT, pattern=r"^[0-9A-Za-z_.:-]+$")
    ] = Field(description="the X-Llmtap-Call-Id of a recorded call")
    name: Annotated[
        str, StringConstraints(min_length=1, max_length=NAME_LIMIT, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")
    ] = Field(description=f"a name of 1 to {NAME_LIMIT} printable characters")
    value: float = Field(description="a number from 0 to 1")

    @field_validator("value", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        # The range first: a huge JSON integer compares fine but cannot become a float.
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError("must be a number from 0 to 1")
        return float(value)

    def score(self) -> Score:
        return Score(self.call_id, self.name, self.value, "feedback")
