"""The graders (collector/grading/graders.py): every kind scores right and wrong answers as
it should, a table that cannot work is a config error naming its key, and the http grader
talks to a real local HTTP server (slow, failing, malformed) without ever showing the
credentials or query of its URL."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, get_args

import pytest
from pydantic import Field, ValidationError

from collector.grading import graders
from collector.grading.graders import (
    Answer,
    GraderSpec,
    GraderTables,
    GradingError,
    HttpGrader,
    JsonSchemaGrader,
    JudgeGrader,
    PythonGrader,
    ReferenceGrader,
    RegexGrader,
    graders_from_table,
    judge_rating,
    prompt_text,
    score,
)
from collector.routing import compare
from collector.settings.config import ConfigError
from collector.settings.validation import Table, explain


class _Config(Table):
    """A config file holding only ``[graders]``, declared as config.py declares it."""

    graders: GraderTables = Field(default_factory=dict)


def load(toml: str) -> tuple[GraderSpec, ...]:
    """The graders of a config file's text, or the ConfigError read_config would raise."""
    document = tomllib.loads(toml)
    try:
        config = _Config.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(
            explain(exc, source="llmtap.toml", root=_Config, document=document, noun="config")
        ) from None
    return graders_from_table(config.graders)


def grader(body: str) -> Any:
    (spec,) = load('[graders."g"]\n' + body)
    return spec


def chat(prompt: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
    }


def answer(text: str, *, request: dict[str, Any] | None = None, reference: str | None = None) -> Answer:
    return Answer("call-1", "mmlu", "gpt-4o", request, text, reference)


def scored(spec: Any, item: Answer, ask: Any = None) -> float:
    return asyncio.run(score(spec, item, ask))


def failure(spec: Any, item: Answer, ask: Any = None) -> str:
    with pytest.raises(GradingError) as caught:
        scored(spec, item, ask)
    message = str(caught.value)
    assert len(message) <= graders.MAX_ERROR_CHARS
    return message


# -- the config -----------------------------------------------------------------------------


def test_every_kind_loads_from_its_table(tmp_path):
    dataset = tmp_path / "refs.jsonl"
    dataset.write_text(
        '{"prompt": "2+2?", "reference": "4"}\n\n{"prompt": " Capital of France? ", "reference": "Paris"}\n'
    )
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "required": ["name"]}')
    specs = load(
        f"""
        [graders.correct-letter]
        kind = "reference"
        apps = ["mmlu_marketing"]
        models = ["gpt-4o"]
        method = "final_number"
        dataset = "{dataset}"

        [graders.header]
        kind = "reference"

        [graders.shape]
        kind = "json_schema"
        schema = {{type = "object", required = ["name"]}}

        [graders.shape-file]
        kind = "json_schema"
        schema = "{schema}"

        [graders.letter]
        kind = "regex"
        pattern = "^\\\\(?[A-D]\\\\)?"

        [graders.quality]
        kind = "judge"

        [graders.mine]
        kind = "python"
        function = "tests.test_graders:says_b"
        timeout_s = 2

        [graders.service]
        kind = "http"
        url = "http://127.0.0.1:9000/grade"
        timeout_s = 0.5
        """
    )
    assert [(spec.name, spec.kind) for spec in specs] == [
        ("correct-letter", "reference"),
        ("header", "reference"),
        ("shape", "json_schema"),
        ("shape-file", "json_schema"),
        ("letter", "regex"),
        ("quality", "judge"),
        ("mine", "python"),
        ("service", "http"),
    ]
    reference, header, shape, shape_file, letter, quality, mine, service = specs
    assert isinstance(reference, ReferenceGrader) and reference.method == "final_number"
    assert reference.dataset is not None
    assert reference.dataset.references == {"2+2?": "4", "Capital of France?": "Paris"}
    assert isinstance(header, ReferenceGrader) and (header.method, header.dataset) == ("exact", None)
    assert isinstance(shape, JsonSchemaGrader) and isinstance(shape_file, JsonSchemaGrader)
    assert shape.json_schema == shape_file.json_schema == {"type": "object", "required": ["name"]}
    assert isinstance(letter, RegexGrader) and letter.pattern.pattern == r"^\(?[A-D]\)?"
    assert isinstance(quality, JudgeGrader) and quality.timeout_s == graders.DEFAULT_JUDGE_TIMEOUT_S
    assert isinstance(mine, PythonGrader) and mine.timeout_s == 2.0
    assert isinstance(service, HttpGrader) and service.timeout_s == 0.5
    assert reference.apps == ("mmlu_marketing",) and reference.models == ("gpt-4o",)
    assert header.apps is None and header.models is None


def test_graders_as_a_settings_field():
    """What Settings holds: the specs as they are, or tables of them picked by kind."""

    class Holder(Table):
        graders: tuple[GraderSpec, ...] = ()

    spec = grader('kind = "regex"\npattern = "x"')
    assert Holder(graders=(spec,)).graders[0] is spec
    (built,) = Holder.model_validate(
        {"graders": [{"name": "n", "kind": "http", "url": "https://h/x"}]}
    ).graders
    assert isinstance(built, HttpGrader) and built.timeout_s == graders.DEFAULT_TIMEOUT_S


def test_the_reference_methods_are_compare_methods():
    assert set(get_args(graders.Method)) <= set(compare.METHODS)


BAD_TABLES = [
    ('kind = "regex"\npattern = "("', 'graders."g".pattern: not a regular expression (missing )'),
    (
        'kind = "regex"\npattern = 3',
        'graders."g".pattern must be a regular expression (Python syntax), got 3',
    ),
    ('kind = "regex"', 'graders."g".pattern is required with kind = "regex": a regular expression'),
    ('kind = "python"', 'graders."g".function is required with kind = "python"'),
    ('kind = "http"', 'graders."g".url is required with kind = "http": an http:// or https:// URL'),
    ('kind = "json_schema"', 'graders."g".schema is required with kind = "json_schema": a JSON schema'),
    (
        'kind = "python"\nfunction = "my_pkg.grading"',
        'graders."g".function must be a Python callable as "module:attribute", e.g. "my_pkg.grading:score", '
        "got 'my_pkg.grading'",
    ),
    ('kind = "python"\nfunction = "a b:c"', 'graders."g".function must be a Python callable'),
    (
        'kind = "nope"',
        "graders.\"g\".kind must be one of reference, json_schema, regex, judge, python, http, got 'nope'",
    ),
    (
        'pattern = "a"',
        'graders."g".kind must be one of reference, json_schema, regex, judge, python, http, got None',
    ),
    (
        'kind = "http"\nurl = "ftp://h/x"',
        "graders.\"g\".url must be an http:// or https:// URL, got 'ftp://h/x'",
    ),
    (
        'kind = "http"\nurl = "http://h"\ntimeout_s = 0',
        'graders."g".timeout_s must be a positive number of seconds, got 0',
    ),
    (
        'kind = "http"\nurl = "http://h"\ntimeout_s = "5"',
        "graders.\"g\".timeout_s must be a positive number of seconds, got '5'",
    ),
    (
        'kind = "regex"\npattern = "a"\ntimeout_s = 5',
        'graders."g".timeout_s applies only to kind = "judge", "python" or "http"',
    ),
    (
        'kind = "regex"\npattern = "a"\nurl = "http://h"',
        'graders."g".url applies only to kind = "http", not "regex"',
    ),
    (
        'kind = "reference"\nmethod = "tool_calls"',
        "graders.\"g\".method must be one of exact, json, final_number, got 'tool_calls'",
    ),
    ('kind = "regex"\npattern = "a"\napps = []', 'graders."g".apps must be a list of app names'),
    ('kind = "regex"\npattern = "a"\nmodels = "gpt-4o"', 'graders."g".models must be a list of model names'),
    ('kind = "regex"\npattern = "a"\npatern = "b"', 'graders."g": unknown keys patern (allowed: kind, apps'),
    ('kind = "json_schema"\nschema = {type = "objet"}', 'graders."g".schema: not a valid JSON schema'),
    ('kind = "json_schema"\nschema = {required = "name"}', 'graders."g".schema: not a valid JSON schema'),
    (
        'kind = "json_schema"\nschema = 3',
        'graders."g".schema: must be a JSON schema: an inline table or the path',
    ),
    (
        'kind = "json_schema"\nschema = "/no/such/schema.json"',
        'graders."g".schema: /no/such/schema.json does not exist',
    ),
    (
        'kind = "reference"\ndataset = "/no/such/refs.jsonl"',
        'graders."g".dataset: /no/such/refs.jsonl does not exist',
    ),
    ('kind = "reference"\ndataset = 3', 'graders."g".dataset must be the path of a JSONL file'),
]


@pytest.mark.parametrize(("body", "message"), BAD_TABLES)
def test_a_bad_table_is_a_config_error_naming_its_key(body, message):
    with pytest.raises(ConfigError, match="^llmtap.toml: " + re.escape(message)):
        grader(body)


def test_a_bad_top_level_is_a_config_error():
    with pytest.raises(
        ConfigError, match=re.escape('graders must be a table of [graders."NAME"] tables, got 3')
    ):
        load("graders = 3")
    with pytest.raises(ConfigError, match=re.escape('graders."g" must be a table like {kind = "regex"')):
        load("[graders]\ng = 3")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('{"prompt": "a", "reference": "1"}\n{"prompt": "b", "reference": ', "line 2 is not JSON"),
        (
            '{"prompt": "a", "reference": "1"}\n{"prompt": "b"}',
            'line 2 must be an object like {"prompt": "...", "reference": "..."}',
        ),
        ('{"prompt": "", "reference": "1"}', 'line 1 must be an object like {"prompt"'),
        ('["a", "1"]', 'line 1 must be an object like {"prompt"'),
        (
            '{"prompt": "a", "reference": "1"}\n{"prompt": "a ", "reference": "2"}',
            "line 2 gives its prompt another reference than line 1",
        ),
        ("\n\n", "has no lines"),
    ],
)
def test_a_bad_dataset_is_a_config_error(tmp_path, lines, message):
    dataset = tmp_path / "refs.jsonl"
    dataset.write_text(lines)
    with pytest.raises(
        ConfigError, match=re.escape(f'llmtap.toml: graders."g".dataset: {dataset} {message}')
    ):
        grader(f'kind = "reference"\ndataset = "{dataset}"')


def test_a_dataset_repeating_a_prompt_with_its_reference_loads(tmp_path):
    dataset = tmp_path / "refs.jsonl"
    dataset.write_text(
        '{"prompt": "a", "reference": {"x": 1}}\n{"prompt": "a", "reference": {"x": 1}, "id": 7}\n'
    )
    spec = grader(f'kind = "reference"\nmethod = "json"\ndataset = "{dataset}"')
    assert spec.dataset.references == {"a": '{"x": 1}'}


def test_applies_by_app_and_model():
    both = grader('kind = "regex"\npattern = "x"\napps = ["a", "b"]\nmodels = ["m"]')
    assert both.applies("a", "m") and both.applies("b", "m")
    assert not both.applies("c", "m") and not both.applies("a", "n") and not both.applies(None, "m")
    anything = grader('kind = "regex"\npattern = "x"')
    assert anything.applies(None, None) and anything.applies("a", "m")


# -- prompt_text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "text"),
    [
        (chat("What is 2+2?"), "What is 2+2?"),
        (
            {
                "messages": [
                    {"role": "user", "content": "first"},
                    {"role": "assistant", "content": "ok"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look at"},
                            {"type": "image_url", "image_url": {"url": "data:..."}},
                            {"type": "text", "text": "this"},
                        ],
                    },
                    {"role": "assistant", "content": "thinking"},
                ]
            },
            "look at\nthis",
        ),
        (  # Anthropic: the last user message is a tool result, with no text
            {
                "system": "sys",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "weather in Paris?"}]},
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "sunny"}],
                    },
                ],
            },
            "weather in Paris?",
        ),
        ({"model": "gpt-4.1", "input": "Tell me a joke"}, "Tell me a joke"),
        (
            {
                "input": [
                    {"role": "developer", "content": "dev"},
                    {"role": "user", "content": [{"type": "input_text", "text": "translate: chat"}]},
                    {"type": "function_call_output", "call_id": "c", "output": "x"},
                ]
            },
            "translate: chat",
        ),
        ({"input": [{"type": "message", "role": "user", "content": "plain"}]}, "plain"),
        ({"contents": [{"parts": [{"text": "gemini asks"}]}]}, "gemini asks"),
        ({"prompt": "Once upon a time"}, "Once upon a time"),
        ({"messages": [{"role": "system", "content": "only system"}]}, ""),
        ({"model": "m"}, ""),
        (None, ""),
    ],
)
def test_prompt_text(request_body, text):
    assert prompt_text(request_body) == text


# -- reference, json_schema, regex ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "reference", "text", "expected"),
    [
        ("exact", "B", "(B) Paris.", 1.0),
        ("exact", "B", "C", 0.0),
        ("exact", "Paris", "paris!", 1.0),
        ("exact", "Paris", "Lyon", 0.0),
        ("json", '{"a": 1, "b": [1, 2]}', '```json\n{"b": [1, 2.0], "a": 1}\n```', 1.0),
        ("json", '{"a": 1}', '{"a": 2}', 0.0),
        ("json", '{"a": 1}', "a is 1", 0.0),
        ("final_number", "18", "16 - 3 - 4 = 9 eggs; 9 * $2 = $18\n#### 18", 1.0),
        ("final_number", "18", "The answer is $18.00", 1.0),
        ("final_number", "18", "The answer is 19", 0.0),
    ],
)
def test_reference_from_the_header(method, reference, text, expected):
    spec = grader(f'kind = "reference"\nmethod = "{method}"')
    assert scored(spec, answer(text, request=chat("q"), reference=reference)) == expected


def test_reference_from_the_dataset(tmp_path):
    dataset = tmp_path / "refs.jsonl"
    dataset.write_text(
        '{"prompt": "Capital of France?", "reference": "Paris"}\n{"prompt": "2+2?", "reference": 4}\n'
    )
    spec = grader(f'kind = "reference"\ndataset = "{dataset}"')
    france = chat("  Capital of France?\n")
    assert scored(spec, answer("Paris.", request=france)) == 1.0
    assert scored(spec, answer("Lyon", request=france)) == 0.0
    assert scored(spec, answer("4", request={"input": "2+2?"})) == 1.0
    # The dataset wins over the header; a prompt it lacks falls back to the header.
    assert scored(spec, answer("Paris", request=france, reference="Lyon")) == 1.0
    assert scored(spec, answer("Lyon", request=chat("Capital of Italy?"), reference="Lyon")) == 1.0
    message = failure(spec, answer("Rome", request=chat("Capital of Italy?")))
    assert message == (
        "reference grader g: no reference: the prompt is not in the dataset and the call has no "
        "X-Llmtap-Reference header"
    )


def test_no_reference_is_an_error():
    spec = grader('kind = "reference"')
    assert "no reference" in failure(spec, answer("B", request=chat("q")))


def test_json_schema(tmp_path):
    spec = grader(
        'kind = "json_schema"\n'
        'schema = {type = "object", required = ["name"], '
        'properties = {name = {type = "string"}, age = {type = "integer"}}}'
    )
    assert scored(spec, answer('{"name": "Ada", "age": 36}')) == 1.0
    assert scored(spec, answer('Here it is:\n```json\n{"name": "Ada"}\n```')) == 0.0  # not JSON alone
    assert scored(spec, answer('```json\n{"name": "Ada", "age": 36}\n```')) == 1.0
    assert scored(spec, answer('{"age": 36}')) == 0.0
    assert scored(spec, answer('{"name": "Ada", "age": 36.5}')) == 0.0
    assert scored(spec, answer('{"name": 7}')) == 0.0
    assert scored(spec, answer("Ada, 36")) == 0.0
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "array", "items": {"type": "number"}}))
    from_file = grader(f'kind = "json_schema"\nschema = "{path}"')
    assert scored(from_file, answer("[1, 2.5]")) == 1.0
    assert scored(from_file, answer('[1, "2"]')) == 0.0


def test_regex():
    spec = grader('kind = "regex"\npattern = "^\\\\(?[A-D]\\\\)?"')
    assert scored(spec, answer("(B) because")) == 1.0
    assert scored(spec, answer("C")) == 1.0
    assert scored(spec, answer("The answer is B")) == 0.0
    found_anywhere = grader('kind = "regex"\npattern = "(?i)refund"')
    assert scored(found_anywhere, answer("You may ask for a REFUND.")) == 1.0


# -- judge ----------------------------------------------------------------------------------


class FakeJudge:
    def __init__(self, reply: str, delay: float = 0.0) -> None:
        self.reply, self.delay = reply, delay
        self.prompts: list[str] = []

    async def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        await asyncio.sleep(self.delay)
        return self.reply


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("8", 0.8),
        ("10", 1.0),
        ("0", 0.0),
        ("Rating: 7/10", 0.7),
        ("I'd rate it 9 out of 10.", 0.9),
        ("On a scale of 0 to 10, I give it 3.", 0.3),
        ("6.5", 0.65),
    ],
)
def test_judge_scores_its_rating(reply, expected):
    judge = FakeJudge(reply)
    spec = grader('kind = "judge"')
    assert scored(
        spec, answer("Paris is the capital.", request=chat("Capital of France?")), judge
    ) == pytest.approx(expected)
    (prompt,) = judge.prompts
    assert "<request>\nCapital of France?\n</request>" in prompt
    assert "<answer>\nParis is the capital.\n</answer>" in prompt


@pytest.mark.parametrize("reply", ["A fine answer.", "15", "", "-3 hmm"])
def test_judge_reply_without_a_rating_is_an_error(reply):
    assert judge_rating(reply) is None
    message = failure(grader('kind = "judge"'), answer("x", request=chat("q")), FakeJudge(reply))
    assert message == "judge grader g: the judge's reply has no rating from 0 to 10"


def test_judge_without_a_judge_model():
    assert "no judge_model set" in failure(grader('kind = "judge"'), answer("x"), None)


def test_judge_timeout_and_failure():
    spec = grader('kind = "judge"\ntimeout_s = 0.1')
    started = time.monotonic()
    assert failure(spec, answer("x"), FakeJudge("9", delay=5)) == "judge grader g: timed out after 0.1 s"
    assert time.monotonic() - started < 2

    async def broken(prompt: str) -> str:
        raise RuntimeError("upstream said no")

    assert (
        failure(spec, answer("x"), broken)
        == "judge grader g: the judge call failed: RuntimeError: upstream said no"
    )


# -- python ---------------------------------------------------------------------------------

NOT_CALLABLE = 3
SEEN_THREADS: list[str] = []
RELEASE = threading.Event()


def says_b(request, answer):
    SEEN_THREADS.append(threading.current_thread().name)
    return answer.strip().startswith("B")


def reads_request(request, answer):
    return 1.0 if prompt_text(request) == "2+2?" and answer == "4" else 0.25


def half(request, answer):
    return 0.5


def too_big(request, answer):
    return 1.5


def not_a_number(request, answer):
    return float("nan")


def huge(request, answer):
    return 10**400


def wrong_type(request, answer):
    return "1"


def raises(request, answer):
    raise KeyError("boom")


def exits(request, answer):
    raise SystemExit(3)


def sleeps(request, answer):
    time.sleep(1.5)
    return 1.0


def waits(request, answer):
    RELEASE.wait(10)
    return 1.0


def python(function: str, timeout_s: float = 5) -> PythonGrader:
    return grader(f'kind = "python"\nfunction = "tests.test_graders:{function}"\ntimeout_s = {timeout_s}')


def test_python_callable_scores_in_a_grader_thread():
    SEEN_THREADS.clear()
    assert scored(python("says_b"), answer("B. Paris")) == 1.0
    assert scored(python("says_b"), answer("C. Lyon")) == 0.0
    assert SEEN_THREADS and all(name.startswith("llmtap-grader") for name in SEEN_THREADS)
    assert scored(python("reads_request"), answer("4", request=chat("2+2?"))) == 1.0
    assert scored(python("reads_request"), answer("5", request=chat("2+2?"))) == 0.25
    assert scored(python("half"), answer("x")) == 0.5


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("too_big", "python grader g: score 1.5 is not a number from 0 to 1"),
        ("not_a_number", "python grader g: score nan is not a number from 0 to 1"),
        ("huge", "python grader g: score 1000000000"),
        ("wrong_type", "python grader g: score '1' is not a number from 0 to 1"),
        ("raises", "python grader g: raised KeyError: 'boom'"),
        ("exits", "python grader g: raised SystemExit: 3"),
        ("missing", "python grader g: cannot load tests.test_graders:missing: AttributeError"),
        (
            "NOT_CALLABLE",
            "python grader g: cannot load tests.test_graders:NOT_CALLABLE: TypeError: not callable",
        ),
    ],
)
def test_python_callable_that_cannot_score(function, message):
    assert failure(python(function), answer("x")).startswith(message)


def test_python_module_that_does_not_exist():
    spec = grader('kind = "python"\nfunction = "no_such_module_llmtap:score"')
    assert failure(spec, answer("x")).startswith(
        "python grader g: cannot load no_such_module_llmtap:score: ModuleNotFoundError"
    )


def test_python_callable_timeout():
    started = time.monotonic()
    assert failure(python("sleeps", timeout_s=0.2), answer("x")) == "python grader g: timed out after 0.2 s"
    assert time.monotonic() - started < 1.2


def _join_grader_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith("llmtap-grader"):
            thread.join(5)


def test_grader_threads_are_bounded():
    """Graders that hang keep their threads; past MAX_THREADS, no more are started."""
    spec = python("waits", timeout_s=0.1)
    _join_grader_threads()  # those of earlier tests' timed-out graders
    RELEASE.clear()

    async def many() -> list[BaseException | float]:
        return await asyncio.gather(
            *(score(spec, answer("x")) for _ in range(graders.MAX_THREADS)), return_exceptions=True
        )

    try:
        outcomes = asyncio.run(many())
        assert all(isinstance(o, GradingError) and "timed out" in str(o) for o in outcomes)
        assert "grader threads are still busy" in failure(python("half"), answer("x"))
    finally:
        RELEASE.set()
    _join_grader_threads()
    assert scored(python("half"), answer("x")) == 0.5


# -- http -----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    received: list[tuple[str, str | None, dict[str, Any]]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.received.append((self.path, self.headers.get("authorization"), body))
        route = self.path.partition("?")[0]
        if route == "/slow":
            time.sleep(1.5)
        if route == "/redirect":
            self.send_response(302)
            self.send_header("location", "/grade")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        status, reply = {
            "/grade": (200, b'{"score": 0.75}'),
            "/yes": (200, b'{"score": true}'),
            "/slow": (200, b'{"score": 1}'),
            "/fail": (500, b"internal error: s3cret"),
            "/bad": (200, b'{"score": 0.5'),
            "/none": (200, b'{"grade": 1}'),
            "/outside": (200, b'{"score": 7}'),
        }[route]
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def service() -> Iterator[tuple[str, list[tuple[str, str | None, dict[str, Any]]]]]:
    received: list[tuple[str, str | None, dict[str, Any]]] = []
    handler = type("Handler", (_Handler,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def http(address: str, route: str, timeout_s: float = 5) -> HttpGrader:
    url = f"http://user:s3cret@{address}{route}?key=s3cret"
    return grader(f'kind = "http"\nurl = "{url}"\ntimeout_s = {timeout_s}')


def test_http_grader_posts_the_call_and_reads_its_score(service):
    address, received = service
    request = chat("Capital of France?")
    item = Answer("call-9", "geo", "gpt-4o", request, "Paris", "Paris")
    assert scored(http(address, "/grade"), item) == 0.75
    (path, authorization, body) = received[-1]
    assert path == "/grade?key=s3cret"
    assert authorization == "Basic " + base64.b64encode(b"user:s3cret").decode()
    assert body == {
        "call_id": "call-9",
        "app": "geo",
        "model": "gpt-4o",
        "request": request,
        "answer": "Paris",
        "reference": "Paris",
    }
    assert scored(http(address, "/yes"), item) == 1.0
    plain = grader(f'kind = "http"\nurl = "http://{address}/grade"')
    assert scored(plain, item) == 0.75
    assert received[-1][:2] == ("/grade", None)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ("/fail", "http grader g: HTTP 500"),
        ("/bad", "http grader g: the reply is not JSON"),
        ("/none", 'http grader g: the reply has no "score"'),
        ("/outside", "http grader g: score 7 is not a number from 0 to 1"),
        ("/redirect", "http grader g: HTTP 302"),
    ],
)
def test_http_grader_failures_show_no_secret(service, route, message):
    address, _ = service
    error = failure(http(address, route), answer("x"))
    assert error == message
    assert "s3cret" not in error and "user" not in error and "key" not in error


def test_http_grader_timeout(service):
    address, _ = service
    started = time.monotonic()
    error = failure(http(address, "/slow", timeout_s=0.3), answer("x"))
    assert error == "http grader g: timed out after 0.3 s"
    assert time.monotonic() - started < 1.2


def test_http_grader_nobody_listening():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as closed:
        port = closed.server_address[1]
    error = failure(http(f"127.0.0.1:{port}", "/grade"), answer("x"))
    assert error.startswith("http grader g: cannot reach the grader (")
    assert "s3cret" not in error


def test_error_messages_are_bounded():
    spec = grader('kind = "reference"').model_copy(update={"name": "n" * 300})
    message = failure(spec, answer("x"))
    assert len(message) == graders.MAX_ERROR_CHARS and message.endswith("…")


def test_the_config_file_declares_graders(tmp_path):
    """Through read_config and load_settings, as the proxy loads them."""
    from collector.settings.config import load_settings

    config = tmp_path / "llmtap.toml"
    config.write_text('[graders.letter]\nkind = "regex"\npattern = "^[A-D]"\napps = ["mmlu"]\n')
    (spec,) = load_settings(data_dir=str(tmp_path), config_file=str(config)).graders
    assert isinstance(spec, RegexGrader) and (spec.name, spec.apps) == ("letter", ("mmlu",))
    config.write_text('[graders.letter]\nkind = "regex"\npattern = "[A-D"\n')
    with pytest.raises(
        ConfigError, match=re.escape(f'{config}: graders."letter".pattern: not a regular expression')
    ):
        load_settings(data_dir=str(tmp_path), config_file=str(config))
