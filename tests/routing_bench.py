"""The routing bench (tests/fixtures/routing-bench, from lm-sys/RouteLLM's evals, Apache-2.0) as
app routes, and a fake OpenRouter that answers each prompt as the recorded model did.

Each MMLU subject and GSM8K is a route: an app asking for :data:`STRONG`. The fake upstream
answers an MMLU prompt with a fixed letter per prompt, the right one when the data says that
model was correct and one fixed wrong letter otherwise; a GSM8K prompt with the model's
recorded response text. The route travels in the system message (a per-route prompt
template, as real apps have), since llmtap removes its metadata headers before upstream.
"""

from __future__ import annotations

import csv
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.upstream import Received, Reply

ROOT = Path(__file__).parent / "fixtures" / "routing-bench"
STRONG = "openai/gpt-4-1106-preview"
WEAK = "mistralai/mixtral-8x7b-instruct"
#: Column names of the two models in the data files.
_COLUMNS = {STRONG: "gpt-4-1106-preview", WEAK: "mistralai/Mixtral-8x7B-Instruct-v0.1"}
GSM8K = "gsm8k"
LETTERS = "ABCD"


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: prompts repeat across routes
class BenchPrompt:
    route: str
    prompt: str
    correct: dict[str, bool]
    #: GSM8K only: each model's recorded response text.
    responses: dict[str, str] | None = None

    def answer(self, model: str) -> str:
        """What ``model`` answered, as the data records it."""
        if self.responses is not None:
            return self.responses[model]
        right = hashlib.sha256(self.prompt.encode()).digest()[0] % 4
        letter = LETTERS[right if self.correct[model] else (right + 1) % 4]
        return f"The answer is ({letter})."


def load_routes(root: Path = ROOT) -> dict[str, list[BenchPrompt]]:
    """Every route's prompts in file order: ``mmlu_<subject>`` for each subject, and ``gsm8k``."""
    routes: dict[str, list[BenchPrompt]] = {}
    for path in sorted((root / "mmlu").glob("mmlu_*.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            routes[path.stem] = [
                BenchPrompt(path.stem, row["prompt"], {m: row[c] == "True" for m, c in _COLUMNS.items()})
                for row in csv.DictReader(f)
            ]
    with (root / "gsm8k_responses.csv").open(newline="", encoding="utf-8") as f:
        routes[GSM8K] = [
            BenchPrompt(
                GSM8K,
                row["prompt"],
                {m: row[c] == "True" for m, c in _COLUMNS.items()},
                {m: row[f"{c}_response"] for m, c in _COLUMNS.items()},
            )
            for row in csv.DictReader(f)
        ]
    return routes


def system_prompt(route: str) -> str:
    if route == GSM8K:
        return "Solve the grade-school maths problem step by step; end with the final number."
    return f"Answer the multiple-choice question on {route.removeprefix('mmlu_').replace('_', ' ')}."


def messages(p: BenchPrompt) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(p.route)}, {"role": "user", "content": p.prompt}]


def openrouter(routes: dict[str, list[BenchPrompt]]) -> Callable[[Received], Reply]:
    """A FakeUpstream route for ``/api/v1/chat/completions`` answering as the recorded models."""
    by_key = {(system_prompt(p.route), p.prompt): p for prompts in routes.values() for p in prompts}

    def reply(received: Received) -> Reply:
        body = json.loads(received.body)
        model = body["model"]
        system, user = (m["content"] for m in body["messages"][:2])
        prompt = by_key.get((system, user))
        if prompt is None or model not in _COLUMNS:
            return Reply.json({"error": {"message": f"unknown prompt or model {model!r}", "code": 400}}, 400)
        text = prompt.answer(model)
        usage = {
            "prompt_tokens": (len(system) + len(user)) // 4 + 8,
            "completion_tokens": len(text) // 4 + 1,
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return Reply.json(
            {
                "id": f"gen-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "model": model,
                "provider": "Fake",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    return reply


_BY_KEY: dict[tuple[str, str], BenchPrompt] = {}


def correctness(request: dict | None, answer: str) -> float:
    """A grader (``kind = "python"``) that knows the recorded correctness: 1 when ``answer`` is
    what the data records a model giving as a right answer to the request's prompt, else 0."""
    if not _BY_KEY:
        _BY_KEY.update({(system_prompt(p.route), p.prompt): p for ps in load_routes().values() for p in ps})
    messages = (request or {}).get("messages") or []
    system, user = (m.get("content") for m in messages[:2])
    prompt = _BY_KEY[(system, user)]
    return float(any(prompt.correct[model] and prompt.answer(model) == answer for model in _COLUMNS))
