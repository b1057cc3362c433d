"""The shadow comparison methods on real-looking outputs, read by the provider modules from
real response shapes; the LLM judge against a fake judge upstream over HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from collector.providers import anthropic, gemini, openai
from collector.providers.base import Output, ToolCall
from collector.routing import compare
from tests.upstream import FakeUpstream, Received, Reply

GPT4_GSM8K = (
    "Janet uses 3 eggs for breakfast and 4 for baking muffins, which totals 3 + 4 = 7 eggs used daily.\n"
    "She lays 16 eggs per day, so the remainder that she sells is 16 - 7 = 9 eggs.\n"
    "She sells each egg for $2, so she makes 9 * $2 = $18 every day at the farmers' market."
)
MIXTRAL_GSM8K = (
    " Janet starts with 16 eggs per day.\nShe eats 3 for breakfast, so she has 16 - 3 = 13 eggs left.\n"
    "She uses 4 for baking, so she has 13 - 4 = 9 eggs left.\n"
    "She sells these 9 eggs at the farmers' market for 9 * $2 = $<<9*2=18>>18.\n#### 18\n\n"
)


@pytest.mark.parametrize("text", ["B", "(B)", "Answer: B", "The answer is (B).", "b", "B. Paris", " [B]\n"])
def test_mmlu_answer_letters_compare_equal(text):
    assert compare.exact_match(Output("B"), Output(text))
    assert not compare.exact_match(Output("C"), Output(text))


def test_exact_match_normalises_case_space_and_punctuation():
    assert compare.exact_match(Output("Positive."), Output("  positive "))
    assert not compare.exact_match(Output("positive"), Output("negative"))
    assert compare.answer_letter("A robe takes 2 bolts") is None  # a sentence, not the letter A


@pytest.mark.parametrize(
    ("text", "number"),
    [("#### 18", 18), ("$18", 18), ("18.00", 18), (GPT4_GSM8K, 18), (MIXTRAL_GSM8K, 18), ("$25,000.", 25000)],
)
def test_final_number(text, number):
    assert compare.final_number(text) == number


def test_final_number_match_on_gsm8k_responses():
    assert compare.final_number_match(Output(GPT4_GSM8K), Output(MIXTRAL_GSM8K))
    assert not compare.final_number_match(Output(GPT4_GSM8K), Output("13 * 2 = 26\n#### 26"))
    assert not compare.final_number_match(Output("no number here"), Output("no number either"))


def test_json_equality_ignores_key_order_whitespace_and_number_forms():
    a = Output('{"name": "Ada", "age": 36, "tags": ["x", "y"], "score": 0.5}')
    b = Output('```json\n{"score": 5e-1, "tags": ["x","y"], "age": 36.0, "name": "Ada"}\n```')
    assert compare.json_match(a, b)
    assert not compare.json_match(a, Output('{"name": "Ada", "age": 37, "tags": ["x", "y"], "score": 0.5}'))
    assert not compare.json_match(a, Output("Sure! Here is the JSON you asked for."))


def test_tool_calls_compare_name_and_canonical_arguments():
    a = Output(tool_calls=[ToolCall("get_weather", '{"city": "Paris", "unit": "c"}')])
    assert compare.tool_calls_match(
        a, Output(tool_calls=[ToolCall("get_weather", '{"unit":"c","city":"Paris"}')])
    )
    assert not compare.tool_calls_match(a, Output(tool_calls=[ToolCall("get_weather", '{"city": "Rome"}')]))
    assert not compare.tool_calls_match(a, Output(tool_calls=[ToolCall("get_time", '{"city": "Paris"}')]))


@pytest.mark.parametrize(
    ("features", "output", "method"),
    [
        ([], Output(tool_calls=[ToolCall("f", "{}")]), compare.TOOL_CALLS),
        (["structured_output"], Output('{"a": 1}'), compare.JSON),
        ([], Output('[{"a": 1}]'), compare.JSON),
        ([], Output(GPT4_GSM8K), compare.FINAL_NUMBER),
        ([], Output("(B)"), compare.EXACT),
        ([], Output("negative"), compare.EXACT),
        (
            [],
            Output("Paris is the capital of France, known for the Eiffel Tower and its museums."),
            compare.JUDGE,
        ),
    ],
)
def test_method_is_chosen_from_the_incumbent_output(features, output, method):
    assert compare.choose_method(features, output) == method


def test_outputs_read_from_each_api_family():
    chat = {"choices": [{"message": {"content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    ]}}]}  # fmt: skip
    assert openai.PROVIDER.read_output("chat", chat).tool_calls == [
        ToolCall("get_weather", '{"city":"Paris"}')
    ]
    chunks = [{"choices": [{"index": 0, "delta": {"content": part}}]} for part in ("The answer", " is (B).")]
    assert openai.PROVIDER.read_output("chat", chunks).text == "The answer is (B)."
    responses = {"output": [{"type": "reasoning"}, {"type": "message", "content": [
        {"type": "output_text", "text": "B"}]}]}  # fmt: skip
    assert openai.PROVIDER.read_output("responses", responses).text == "B"
    tool_use = {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris"}}
    message = {"content": [{"type": "text", "text": "Let me check."}, tool_use]}
    out = anthropic.PROVIDER.read_output("messages", message)
    assert (out.text, out.tool_calls) == ("Let me check.", [ToolCall("get_weather", '{"city": "Paris"}')])
    events = [
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "#### 18"}},
    ]
    assert anthropic.PROVIDER.read_output("messages", events).text == "#### 18"
    parts = [{"text": "thinking...", "thought": True}, {"text": "18"}]
    assert (
        gemini.PROVIDER.read_output("generate_content", {"candidates": [{"content": {"parts": parts}}]}).text
        == "18"
    )


def judge_upstream(verdicts: list[str]) -> FakeUpstream:
    """A judge model that answers the given verdicts in turn, over real HTTP."""
    server = FakeUpstream()

    def reply(received: Received) -> Reply:
        verdict = verdicts[len(server.received) - 1]
        return Reply.json({"choices": [{"message": {"role": "assistant", "content": verdict}}]})

    server.routes["/v1/chat/completions"] = reply
    return server


@pytest.mark.parametrize(
    ("verdicts", "agree", "asked"),
    [(["SAME", "SAME"], True, 2), (["2", "1"], True, 2), (["1", "2"], False, 1), (["SAME", "2"], False, 2)],
)
def test_judge_asks_both_orders_and_needs_both(verdicts, agree, asked):
    incumbent = Output("Paris is the capital of France.")
    candidate = Output("The capital of France is Paris.")
    with judge_upstream(verdicts) as server:

        async def ask(prompt: str) -> str:
            body = {"model": "judge", "messages": [{"role": "user", "content": prompt}]}
            async with httpx.AsyncClient() as http:
                answer = await http.post(f"{server.url}/v1/chat/completions", json=body)
            return openai.PROVIDER.read_output("chat", answer.json()).text

        result = asyncio.run(
            compare.judge_agrees("What is the capital of France?", incumbent, candidate, ask)
        )
        prompts = [json.loads(r.body)["messages"][0]["content"] for r in server.received]
    assert result is agree
    assert len(prompts) == asked
    assert prompts[0].index(incumbent.text) < prompts[0].index(candidate.text)
    if asked == 2:
        assert prompts[1].index(candidate.text) < prompts[1].index(incumbent.text)  # order swapped
