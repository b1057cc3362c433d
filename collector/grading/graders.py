"""Graders: a score in [0, 1] for one LLM answer, declared in the config as::

    [graders."correct-letter"]    # the table's key is the grader's name (the score's name)
    kind = "reference"            # reference | json_schema | regex | judge | python | http
    apps = ["mmlu_marketing"]     # optional: only calls of these apps (X-Llmtap-App)
    models = ["gpt-4o"]           # optional: only calls whose client asked for one of these models
    method = "exact"              # reference: exact | json | final_number (collector.routing.compare)
    dataset = "refs.jsonl"        # reference: {"prompt": ..., "reference": ...} lines; without it,
                                  #   the reference is the call's X-Llmtap-Reference header
    pattern = "^\\(?[A-D]\\)?"    # regex: 1 when re.search finds it in the answer, else 0
    schema = {type = "object"}    # json_schema: an inline table, or the path of a JSON file
    function = "pkg.mod:score"    # python: (request: dict | None, answer: str) -> float | bool
    url = "http://127.0.0.1:9000/grade"  # http: POST {"call_id", "app", "model", "request",
                                  #   "answer", "reference"}; the reply is {"score": x}
    timeout_s = 10                # python, http, judge: the longest wait for one score

A person writes these tables, so the file is validated as one flat :class:`GraderTable` per
grader: :func:`collector.settings.validation.explain` then names the exact key of a mistake
(``graders."g".pattern is required with kind = "regex": ...``), which it cannot do through a
union's member tags. Everything that can be checked is checked then, not on the first call:
the regex compiles, the schema is a valid JSON schema, the dataset is read and every line is
valid. :func:`graders_from_table` turns the tables into :data:`GraderSpec`, one model per
kind holding what scoring uses (the compiled pattern, the dataset's references by prompt).

:func:`score` scores one :class:`Answer`, or raises :class:`GradingError` with a short reason
(never a URL's credentials or query). User code and HTTP calls run in daemon threads of their
own, not in the event loop's default executor: one that hangs then neither starves the
proxy's DNS lookups (which use that executor) nor holds up the process's exit, and at most
:data:`MAX_THREADS` run at once. Standard library, pydantic and (when a json_schema grader is
configured) jsonschema only: the settings import this module.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib
import json
import numbers
import re
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, assert_never, cast, get_args
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, PrivateAttr, model_validator

from collector.providers.base import Output
from collector.routing import compare
from collector.settings.validation import HttpUrl, Names, Seconds, Table, field_error, not_as_described

if TYPE_CHECKING:
    from urllib.request import OpenerDirector

    from jsonschema.protocols import Validator

__all__ = [
    "JUDGE_PROMPT",
    "MAX_ERROR_CHARS",
    "MAX_THREADS",
    "Answer",
    "Dataset",
    "GraderSpec",
    "GraderTable",
    "GraderTables",
    "GradingError",
    "HttpGrader",
    "JsonSchemaGrader",
    "JudgeGrader",
    "PythonGrader",
    "ReferenceGrader",
    "RegexGrader",
    "graders_from_table",
    "judge_rating",
    "prompt_text",
    "score",
]

Kind = Literal["reference", "json_schema", "regex", "judge", "python", "http"]
#: The comparisons of :data:`collector.routing.compare.METHODS` that read text (not tool calls).
Method = Literal["exact", "json", "final_number"]

DEFAULT_TIMEOUT_S = 10.0
#: A judge is a model call: slower than a local function or service.
DEFAULT_JUDGE_TIMEOUT_S = 30.0
#: Longest :class:`GradingError` message (it is stored with the score).
MAX_ERROR_CHARS = 200
#: Most grader threads (python and http graders) running at once; more are refused, so a
#: grader that hangs on every call cannot pile up threads without end.
MAX_THREADS = 16
#: Largest reply an http grader may send.
MAX_REPLY_BYTES = 64 * 1024


class GradingError(Exception):
    """A grader could not score: the message says why (bounded, no secrets). ``brief`` says it
    without quoting anything the grader itself said or returned (an exception's message, a
    returned value), which may quote the prompt: what is kept when no prompt may be."""

    def __init__(self, message: str, brief: str | None = None) -> None:
        super().__init__(message)
        self.brief = brief if brief is not None else message


# -- value types -------------------------------------------------------------------------------


class Dataset(Table):
    """A reference dataset, read: its path, and each prompt's reference (prompts stripped of
    surrounding white space; a reference that is not a JSON string is kept as JSON text)."""

    path: Path
    references: dict[str, str]


def _dataset(value: Any) -> Any:
    """A JSONL file's path as the :class:`Dataset` it holds; a bad file is a config error."""
    if isinstance(value, Dataset):
        return value
    if not isinstance(value, str) or not value.strip():
        raise not_as_described()
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} cannot be read ({type(exc).__name__})") from None
    references: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            item = json.loads(line)
        except ValueError:
            raise ValueError(f"{where} is not JSON") from None
        prompt = item.get("prompt") if isinstance(item, dict) else None
        reference = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(prompt, str) or not prompt.strip() or reference is None:
            raise ValueError(f'{where} must be an object like {{"prompt": "...", "reference": "..."}}')
        key = prompt.strip()
        shown = reference if isinstance(reference, str) else json.dumps(reference)
        if references.setdefault(key, shown) != shown:
            raise ValueError(f"{where} gives its prompt another reference than line {first_line[key]}")
        first_line.setdefault(key, number)
    if not references:
        raise ValueError(f"{path} has no lines")
    return Dataset(path=path, references=references)


def _json_schema(value: Any) -> Any:
    """An inline schema, or the path of a JSON file holding one; checked to be a valid schema."""
    if isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} cannot be read ({type(exc).__name__})") from None
        except ValueError:
            raise ValueError(f"{path} is not JSON") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path} does not hold a JSON object")
    if not isinstance(value, dict):
        raise ValueError(
            f"must be a JSON schema: an inline table or the path of a JSON file, got {value!r:.60}"
        )
    from jsonschema.exceptions import SchemaError  # only when such a grader is configured
    from jsonschema.validators import validator_for

    try:
        validator_for(value).check_schema(value)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON schema: {exc.message:.150}") from None
    return value


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression ({exc})") from None
    return pattern


DatasetFile = Annotated[
    Dataset,
    BeforeValidator(_dataset),
    Field(description='the path of a JSONL file of {"prompt": "...", "reference": "..."} lines'),
]
JsonSchema = Annotated[dict[str, Any], BeforeValidator(_json_schema)]
#: ``module:attribute`` (both possibly dotted): how a Python callable is named.
FUNCTION_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
FunctionName = Annotated[
    str,
    Field(
        pattern=FUNCTION_PATTERN,
        description='a Python callable as "module:attribute", e.g. "my_pkg.grading:score"',
    ),
]


# -- the specs: one model per kind -------------------------------------------------------------


class _Grader(Table):
    """What every grader has: its name (the table's key) and the calls it applies to."""

    name: str
    apps: Names | None = None
    models: Names | None = None

    def applies(self, app: str | None, model: str | None) -> bool:
        """Whether a call of ``app`` that asked for ``model`` is scored by this grader."""
        return (self.apps is None or app in self.apps) and (self.models is None or model in self.models)


class ReferenceGrader(_Grader):
    """1 when the answer agrees with the reference by ``method``, else 0; the reference is
    the dataset's for the call's prompt, else the call's X-Llmtap-Reference header."""

    kind: Literal["reference"] = "reference"
    method: Method = "exact"
    dataset: DatasetFile | None = None


class JsonSchemaGrader(_Grader):
    """1 when the answer is JSON (also in a Markdown fence) that the schema accepts, else 0."""

    kind: Literal["json_schema"] = "json_schema"
    json_schema: JsonSchema
    _validator: Any = PrivateAttr(default=None)

    def validator(self) -> Validator:
        """The schema's validator, made once."""
        if self._validator is None:
            from jsonschema.validators import validator_for

            self._validator = validator_for(self.json_schema)(self.json_schema)
        return cast("Validator", self._validator)


class RegexGrader(_Grader):
    """1 when the pattern is found (``re.search``) in the answer, else 0."""

    kind: Literal["regex"] = "regex"
    pattern: re.Pattern[str]


class JudgeGrader(_Grader):
    """The judge model's rating of the answer, from 0 to 10, divided by 10."""

    kind: Literal["judge"] = "judge"
    timeout_s: Seconds = DEFAULT_JUDGE_TIMEOUT_S


class PythonGrader(_Grader):
    """What a Python callable returns for the request and the answer."""

    kind: Literal["python"] = "python"
    function: FunctionName
    timeout_s: Seconds = DEFAULT_TIMEOUT_S


class HttpGrader(_Grader):
    """What an HTTP service replies to a POST of the call."""

    kind: Literal["http"] = "http"
    url: HttpUrl
    timeout_s: Seconds = DEFAULT_TIMEOUT_S


_Spec = ReferenceGrader | JsonSchemaGrader | RegexGrader | JudgeGrader | PythonGrader | HttpGrader
#: One grader, ready to score; a pydantic field of this type picks the model by ``kind``.
GraderSpec = Annotated[_Spec, Field(discriminator="kind")]
_SPECS: dict[str, type[_Spec]] = {cls.model_fields["kind"].default: cls for cls in get_args(_Spec)}


# -- the table a person writes -----------------------------------------------------------------


class GraderTable(Table):
    """A ``[graders."NAME"]`` table: every kind's keys, each allowed only with its kinds."""

    model_config = ConfigDict(populate_by_name=True)

    kind: Kind
    apps: Names | None = Field(default=None, description='a list of app names, e.g. ["checkout"]')
    models: Names | None = Field(default=None, description='a list of model names, e.g. ["gpt-4o"]')
    method: Method | None = None
    dataset: DatasetFile | None = Field(
        default=None, description='the path of a JSONL file of {"prompt": "...", "reference": "..."} lines'
    )
    pattern: Annotated[str, AfterValidator(_regex)] | None = Field(
        default=None, description="a regular expression (Python syntax)"
    )
    # "schema" would shadow a BaseModel method: the key is an alias.
    json_schema: JsonSchema | None = Field(
        default=None,
        alias="schema",
        description="a JSON schema: an inline table or the path of a JSON file",
    )
    function: FunctionName | None = Field(
        default=None, description='a Python callable as "module:attribute", e.g. "my_pkg.grading:score"'
    )
    url: HttpUrl | None = Field(default=None, description="an http:// or https:// URL")
    timeout_s: Seconds | None = Field(default=None, description="a positive number of seconds")

    @model_validator(mode="after")
    def _keys_of_its_kind(self) -> GraderTable:
        spec = _SPECS[self.kind]
        for name, field in type(self).model_fields.items():
            if name in ("kind", "apps", "models"):
                continue
            key = field.alias or name
            given = getattr(self, name) is not None
            if name in spec.model_fields and not given and spec.model_fields[name].is_required():
                raise field_error(key, f'is required with kind = "{self.kind}": {field.description}')
            if name not in spec.model_fields and given:
                kinds = [f'"{kind}"' for kind, cls in _SPECS.items() if name in cls.model_fields]
                either = " or ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
                raise field_error(key, f'applies only to kind = {either}, not "{self.kind}"')
        return self

    def spec(self, name: str) -> GraderSpec:
        """This table as the grader ``name``."""
        cls = _SPECS[self.kind]
        values = {key: getattr(self, key) for key in cls.model_fields if key not in ("name", "kind")}
        return cls(name=name, **{key: value for key, value in values.items() if value is not None})


#: The config's ``[graders]`` table: grader name -> its table.
GraderTables = Annotated[
    dict[
        str,
        Annotated[GraderTable, Field(description='a table like {kind = "regex", pattern = "^[A-D]"}')],
    ],
    Field(description='a table of [graders."NAME"] tables'),
]


def graders_from_table(tables: Mapping[str, GraderTable]) -> tuple[GraderSpec, ...]:
    """The graders of a ``[graders]`` table, in file order, each named by its key."""
    return tuple(table.spec(name) for name, table in tables.items())


# -- scoring -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """What one call gives a grader."""

    call_id: str
    app: str | None
    #: The model the call asked for.
    model: str | None
    #: The request body as JSON (None if it was not JSON).
    request: dict[str, Any] | None
    #: The answer's text (with its tool calls rendered, if any).
    text: str
    #: From the X-Llmtap-Reference header, if any.
    reference: str | None = None


async def score(
    spec: GraderSpec, answer: Answer, ask_judge: Callable[[str], Awaitable[str]] | None = None
) -> float:
    """The score of ``answer`` by ``spec``, in [0, 1]; GradingError when it cannot be scored.
    ``ask_judge`` sends a prompt to the judge model and returns its reply (judge graders)."""
    match spec:
        case ReferenceGrader():
            return _by_reference(spec, answer)
        case JsonSchemaGrader():
            return _by_schema(spec, answer)
        case RegexGrader():
            return 1.0 if spec.pattern.search(answer.text) else 0.0
        case JudgeGrader():
            return await _by_judge(spec, answer, ask_judge)
        case PythonGrader():
            return await _timed(spec, _in_thread(spec, lambda: _by_function(spec, answer)))
        case HttpGrader():
            body = json.dumps(
                {
                    "call_id": answer.call_id,
                    "app": answer.app,
                    "model": answer.model,
                    "request": answer.request,
                    "answer": answer.text,
                    "reference": answer.reference,
                }
            ).encode()
            return await _timed(spec, _in_thread(spec, lambda: _by_service(spec, body)))
        case _:
            assert_never(spec)


def prompt_text(request: dict[str, Any] | None) -> str:
    """The text of the request's last user message that has text: OpenAI chat and Anthropic
    ``messages``, OpenAI responses ``input`` (a string or items), Gemini ``contents``, or a
    completions ``prompt``; "" when there is none."""
    if not isinstance(request, dict):
        return ""
    for key in ("messages", "input", "contents"):
        value = request.get(key)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list):
            for item in reversed(value):
                is_user = isinstance(item, dict) and item.get("role", "user") == "user"
                if is_user and (text := _text(item.get("content", item.get("parts")))):
                    return text
    prompt = request.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _text(content: Any) -> str:
    """A message's text: a string, or the "text" of its parts (images, tool results skipped)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _by_reference(spec: ReferenceGrader, answer: Answer) -> float:
    reference = None
    if spec.dataset is not None:
        reference = spec.dataset.references.get(prompt_text(answer.request).strip())
    if reference is None:
        reference = answer.reference
    if reference is None:
        where = "the prompt is not in the dataset and " if spec.dataset is not None else ""
        raise _fail(spec, f"no reference: {where}the call has no X-Llmtap-Reference header")
    agrees = compare.METHODS[spec.method](Output(text=reference), Output(text=answer.text))
    return 1.0 if agrees else 0.0


def _by_schema(spec: JsonSchemaGrader, answer: Answer) -> float:
    try:
        # Numbers through canonical JSON: parse_json reads them as Decimal, which the schema
        # type "integer" does not accept.
        document = json.loads(compare.canonical_json(compare.parse_json(answer.text)))
    except (ValueError, RecursionError):
        return 0.0
    try:
        return 1.0 if spec.validator().is_valid(document) else 0.0
    except Exception as exc:  # e.g. a $ref that cannot be resolved
        raise _fail(spec, f"the schema cannot be applied ({type(exc).__name__})") from None


JUDGE_PROMPT = """You rate how well an answer serves a request.

Request:
<request>
{request}
</request>

Answer:
<answer>
{answer}
</answer>

Rate the answer from 0 (wrong or useless) to 10 (correct, complete and useful).
Reply with the rating alone: one whole number from 0 to 10."""

#: "7/10" or "7 out of 10" is a rating of 7: the scale is dropped before the rating is read.
_SCALE = re.compile(r"\s*(?:/|out\s+of)\s*10(?:\.0+)?(?!\.?\d)", re.IGNORECASE)
#: A rating: no sign (-3 is out of range, not 3), no part of a longer number.
_NUMBER = re.compile(r"(?<![\d.\-])\d+(?:\.\d+)?(?!\.?\d)")


def judge_rating(reply: str) -> float | None:
    """The judge's rating from 0 to 10: the last number of its reply once "/10" and "out of
    10" are dropped (so "On a scale of 0 to 10: 7" is 7); None when there is none in range."""
    numbers = _NUMBER.findall(_SCALE.sub("", reply))
    if not numbers:
        return None
    rating = float(numbers[-1])
    return rating if 0 <= rating <= 10 else None


async def _by_judge(
    spec: JudgeGrader, answer: Answer, ask_judge: Callable[[str], Awaitable[str]] | None
) -> float:
    if ask_judge is None:
        raise _fail(spec, "no judge_model set ([routing] judge_model)")
    prompt = JUDGE_PROMPT.format(request=prompt_text(answer.request) or "(no text)", answer=answer.text)
    try:
        reply = await asyncio.wait_for(ask_judge(prompt), spec.timeout_s)
    except TimeoutError:
        raise _fail(spec, f"timed out after {spec.timeout_s:g} s") from None
    except GradingError:
        raise
    except Exception as exc:
        raise _fail(
            spec, f"the judge call failed: {_described(exc)}", f"the judge call failed: {_kind(exc)}"
        ) from None
    rating = judge_rating(reply) if isinstance(reply, str) else None
    if rating is None:
        raise _fail(spec, "the judge's reply has no rating from 0 to 10")
    return rating / 10


def _by_function(spec: PythonGrader, answer: Answer) -> float:
    """In a grader thread: the callable's score (imported on first use)."""
    try:
        function = _callable(spec.function)
    except Exception as exc:
        raise _fail(
            spec, f"cannot load {spec.function}: {_described(exc)}", f"cannot load {spec.function}"
        ) from None
    try:
        value = function(answer.request, answer.text)
    except BaseException as exc:  # a grader's SystemExit must not end the proxy
        raise _fail(spec, f"raised {_described(exc)}", f"raised {_kind(exc)}") from None
    return _unit(spec, value)


@functools.cache
def _callable(reference: str) -> Callable[..., object]:
    module, _, path = reference.partition(":")
    target: Any = importlib.import_module(module)
    for attribute in path.split("."):
        target = getattr(target, attribute)
    if not callable(target):
        raise TypeError("not callable")
    return cast("Callable[..., object]", target)


def _by_service(spec: HttpGrader, body: bytes) -> float:
    """In a grader thread: POST the call to the grader's URL and read its score. The URL's
    user and password become a Basic authorization header; no message shows the URL."""
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError

    parts = urlsplit(spec.url)
    try:
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        netloc = f"{host}:{parts.port}" if parts.port else f"{host}"
    except ValueError:
        raise _fail(spec, "the URL's port is not a number from 0 to 65535") from None
    headers = {"content-type": "application/json", "user-agent": "llmtap-grader"}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(credentials).decode()
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    from urllib.request import Request

    try:
        with _opener().open(
            Request(url, data=body, headers=headers, method="POST"), timeout=spec.timeout_s
        ) as reply:
            raw = reply.read(MAX_REPLY_BYTES + 1)
    except HTTPError as exc:
        exc.close()
        raise _fail(spec, f"HTTP {exc.code}") from None
    except TimeoutError:
        raise _fail(spec, f"timed out after {spec.timeout_s:g} s") from None
    except (URLError, OSError, HTTPException, ValueError) as exc:
        reason = exc.reason if isinstance(exc, URLError) else exc
        if isinstance(reason, TimeoutError):
            raise _fail(spec, f"timed out after {spec.timeout_s:g} s") from None
        raise _fail(spec, f"cannot reach the grader ({type(reason).__name__})") from None
    if len(raw) > MAX_REPLY_BYTES:
        raise _fail(spec, f"the reply is larger than {MAX_REPLY_BYTES // 1024} KiB")
    try:
        document = json.loads(raw)
    except ValueError:
        raise _fail(spec, "the reply is not JSON") from None
    if not isinstance(document, dict) or "score" not in document:
        raise _fail(spec, 'the reply has no "score"')
    return _unit(spec, document["score"])


@functools.cache
def _opener() -> OpenerDirector:
    """An opener that connects directly (the proxy's own environment may name llmtap itself
    as its proxy) and follows no redirect (which would carry the authorization elsewhere)."""
    from urllib.request import HTTPRedirectHandler, ProxyHandler, build_opener

    class NoRedirects(HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    return build_opener(ProxyHandler({}), NoRedirects())


# -- helpers -----------------------------------------------------------------------------------

_THREADS = threading.BoundedSemaphore(MAX_THREADS)


def _in_thread(spec: _Spec, call: Callable[[], float]) -> asyncio.Future[float]:
    """``call`` run in a daemon thread of its own (see the module docstring), as a future of
    the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[float] = loop.create_future()
    if not _THREADS.acquire(blocking=False):
        future.set_exception(_fail(spec, f"not started: {MAX_THREADS} grader threads are still busy"))
        return future

    def run() -> None:
        result: float | None = None
        error: BaseException | None = None
        try:
            result = call()
        except BaseException as exc:
            error = exc
        finally:
            _THREADS.release()
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=run, name=f"llmtap-grader-{spec.name}", daemon=True).start()
    return future


def _settle(future: asyncio.Future[float], result: float | None, error: BaseException | None) -> None:
    if future.done():  # timed out meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        assert result is not None
        future.set_result(result)


async def _timed(spec: PythonGrader | HttpGrader, work: Awaitable[float]) -> float:
    try:
        return await asyncio.wait_for(work, spec.timeout_s)
    except TimeoutError:
        raise _fail(spec, f"timed out after {spec.timeout_s:g} s") from None


def _unit(spec: _Spec, value: object) -> float:
    """A grader's result as a score: a bool is 1 or 0; a number must be in [0, 1] (not NaN)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, numbers.Real):
        with contextlib.suppress(OverflowError):  # an int too large for a float
            number = float(value)
            if 0 <= number <= 1:  # NaN is not
                return number
    raise _fail(
        spec, f"score {value!r:.40} is not a number from 0 to 1", "its score is not a number from 0 to 1"
    )


def _described(exc: BaseException) -> str:
    message = str(exc).strip()
    return f"{_kind(exc)}: {message:.100}" if message else _kind(exc)


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


def _fail(spec: _Spec, why: str, brief: str | None = None) -> GradingError:
    """The error of ``spec``; ``brief`` is ``why`` without what the grader said (see GradingError)."""

    def bounded(text: str) -> str:
        message = f"{spec.kind} grader {spec.name}: {text}"
        return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 1] + "…"

    return GradingError(bounded(why), bounded(brief if brief is not None else why))
