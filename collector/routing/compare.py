"""Does a candidate model's answer agree with the incumbent's? The comparison methods.

A shadow copy is only evidence if its output is compared the right way for what the call
asks: a label is the same label whatever its case or punctuation, JSON is the same JSON in
any key order, a worked arithmetic answer is right when its final number is, and only free
text needs a judge. Each method is a small pure function over two :class:`Output`; which
one applies is chosen from the incumbent's output and the request's features by
:data:`DETECTORS`, tried in order (data, not branches). Standard library only: the proxy
imports this module.

The LLM judge (:func:`judge_agrees`) is asked twice with the two answers in swapped
positions, which cancels the judge's position bias; the answers agree only if both orders
say the candidate is equivalent or not worse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from collector.providers.base import Output

EXACT = "exact"
JSON = "json"
TOOL_CALLS = "tool_calls"
FINAL_NUMBER = "final_number"
JUDGE = "judge"

#: Most words an answer may have to count as a short answer or label.
SHORT_ANSWER_WORDS = 6

#: An answer letter alone, in brackets, or followed by "." ":" ")" (so "A robe takes..." is
#: not the letter A), after an optional "The answer is"; anything may follow the letter's mark.
_ANSWER_LETTER = re.compile(
    r"^\s*(?:(?:the\s+)?(?:correct\s+)?(?:final\s+)?answer(?:\s+is)?\s*[:\-]?\s*)?"
    r"(?:\(([A-J])\)|\[([A-J])\]|([A-J])(?:[.:)]|\s*$))(?:[.\s].*)?$",
    re.IGNORECASE | re.DOTALL,
)
_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+")
_GSM8K_MARK = re.compile(r"####\s*(" + _NUMBER.pattern + ")")
_ARITHMETIC = re.compile(r"\d\s*[-+*/x\u00d7\u00f7]\s*\$?\d[\d,.]*\s*=")
_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL | re.IGNORECASE)
_PUNCTUATION = re.compile(r"[^\w\s]")


def canonical_text(text: str) -> str:
    """Lower case, punctuation dropped, runs of white space made one space."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def answer_letter(text: str) -> str | None:
    """The multiple-choice letter of an answer such as "B", "(B)", "Answer: B", "B. Paris"."""
    found = _ANSWER_LETTER.match(text)
    return next(letter for letter in found.groups() if letter).upper() if found else None


def exact_match(a: Output, b: Output) -> bool:
    """Short answers and labels: the same answer letter, else the same canonical text."""
    letters = answer_letter(a.text), answer_letter(b.text)
    if letters[0] is not None and letters[1] is not None:
        return letters[0] == letters[1]
    return canonical_text(a.text) == canonical_text(b.text)


def parse_json(text: str) -> Any:
    """JSON text, also inside a Markdown code fence; raises ValueError when it is not JSON."""
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text, parse_float=Decimal, parse_int=Decimal)


def canonical_json(value: Any) -> str:
    """One spelling per JSON value: sorted keys, no spaces, numbers by value (1, 1.0, 1e0 alike)."""
    return json.dumps(_canonical_numbers(value), sort_keys=True, separators=(",", ":"))


def json_match(a: Output, b: Output) -> bool:
    """Structured output: equal as JSON values; an answer that is not JSON never agrees."""
    try:
        return canonical_json(parse_json(a.text)) == canonical_json(parse_json(b.text))
    except ValueError:
        return False


def tool_calls_match(a: Output, b: Output) -> bool:
    """The same tools called with the same arguments (canonical JSON), in any order."""
    return sorted(_call_keys(a)) == sorted(_call_keys(b))


def final_number(text: str) -> Decimal | None:
    """The answer of a worked solution: the number after GSM8K's "####", else the last number
    in the text; "$18", "18.00" and "1,800" read as numbers."""
    marked = _GSM8K_MARK.search(text)
    numbers = [marked.group(1)] if marked else _NUMBER.findall(text)
    for raw in reversed(numbers):
        try:
            return Decimal(re.sub(r"[\s$,]", "", raw)).normalize()
        except InvalidOperation:
            continue
    return None


def final_number_match(a: Output, b: Output) -> bool:
    """Worked answers: the same final number (an answer with none never agrees)."""
    number = final_number(a.text)
    return number is not None and number == final_number(b.text)


#: The methods that need no model, by name.
METHODS: dict[str, Callable[[Output, Output], bool]] = {
    EXACT: exact_match,
    JSON: json_match,
    TOOL_CALLS: tool_calls_match,
    FINAL_NUMBER: final_number_match,
}


def _is_json(features: Sequence[str], output: Output) -> bool:
    if "structured_output" in features:
        return True
    try:
        return isinstance(parse_json(output.text), dict | list)
    except ValueError:
        return False


def _is_worked_answer(features: Sequence[str], output: Output) -> bool:
    return bool(_GSM8K_MARK.search(output.text) or _ARITHMETIC.search(output.text))


def _is_short(features: Sequence[str], output: Output) -> bool:
    return answer_letter(output.text) is not None or len(output.text.split()) <= SHORT_ANSWER_WORDS


#: Which method compares a call, from its request features and the incumbent's output: the
#: first detector that says yes; free text (none of them) goes to the judge.
DETECTORS: tuple[tuple[str, Callable[[Sequence[str], Output], bool]], ...] = (
    (TOOL_CALLS, lambda features, output: bool(output.tool_calls)),
    (JSON, _is_json),
    (FINAL_NUMBER, _is_worked_answer),
    (EXACT, _is_short),
)


def choose_method(features: Sequence[str], incumbent: Output) -> str:
    """The comparison for a call: a name from :data:`METHODS`, or :data:`JUDGE`."""
    return next((name for name, applies in DETECTORS if applies(features, incumbent)), JUDGE)


JUDGE_PROMPT = """You compare two answers to the same request.

Request:
<request>
{question}
</request>

Answer 1:
<answer_1>
{first}
</answer_1>

Answer 2:
<answer_2>
{second}
</answer_2>

Is one answer better than the other for this request (more correct, complete and useful)?
Reply with exactly one word: 1 if answer 1 is better, 2 if answer 2 is better, SAME if they
are equivalent in quality."""

_VERDICT = re.compile(r"\b(SAME|1|2)\b", re.IGNORECASE)


def judge_verdict(reply: str) -> str | None:
    """ "1", "2" or "SAME" from the judge's reply; None when it gave none."""
    found = _VERDICT.search(reply)
    return found.group(1).upper() if found else None


async def judge_agrees(
    question: str, incumbent: Output, candidate: Output, ask: Callable[[str], Awaitable[str]]
) -> bool:
    """Free text: the judge, asked with the incumbent first and then second, must both times
    find the candidate equivalent or better. ``ask`` sends a prompt to the judge model and
    returns its reply text."""
    first = await ask(
        JUDGE_PROMPT.format(question=question, first=shown_text(incumbent), second=shown_text(candidate))
    )
    if judge_verdict(first) not in ("SAME", "2"):
        return False
    second = await ask(
        JUDGE_PROMPT.format(question=question, first=shown_text(candidate), second=shown_text(incumbent))
    )
    return judge_verdict(second) in ("SAME", "1")


def shown_text(output: Output) -> str:
    """An answer as a judge or grader reads it: its text, then its tool calls."""
    calls = "".join(f"\n[tool call {c.name}({c.arguments})]" for c in output.tool_calls)
    return output.text + calls


def _call_keys(output: Output) -> list[tuple[str, str]]:
    keys = []
    for call in output.tool_calls:
        try:
            arguments = canonical_json(parse_json(call.arguments or "{}"))
        except ValueError:
            arguments = call.arguments  # not JSON: compared as written
        keys.append((call.name, arguments))
    return keys


def _canonical_numbers(value: Any) -> Any:
    """Decimals (how :func:`parse_json` reads numbers) as ints when whole, else as floats,
    so equal numbers have one spelling."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {key: _canonical_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical_numbers(item) for item in value]
    return value
