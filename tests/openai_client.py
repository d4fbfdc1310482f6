"""The official OpenAI Python client against `specrun serve` (run by tests/serve.rs).

Usage: openai_client.py BASE_URL   (the server runs with --api-key k)
"""
import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="k", max_retries=0, timeout=60)

chat = client.chat.completions.create(
    model="qwen-coder",
    messages=[{"role": "user", "content": "hello there"}],
    max_tokens=20,
    temperature=0.7,
    seed=3,
)
text = chat.choices[0].message.content
assert text, chat
assert chat.usage.completion_tokens == 20, chat.usage

parts = []
for ev in client.chat.completions.create(
    model="qwen-coder",
    messages=[{"role": "user", "content": "hello there"}],
    max_tokens=20,
    temperature=0.7,
    seed=3,
    stream=True,
):
    if ev.choices and ev.choices[0].delta.content:
        parts.append(ev.choices[0].delta.content)
assert "".join(parts) == text, ("".join(parts), text)

done = client.completions.create(model="qwen-coder", prompt="def f(x):", max_tokens=12)
streamed = "".join(
    c.choices[0].text for c in client.completions.create(model="qwen-coder", prompt="def f(x):", max_tokens=12, stream=True) if c.choices
)
assert streamed == done.choices[0].text, (streamed, done.choices[0].text)

try:
    client.chat.completions.create(model="qwen-coder", messages=[{"role": "user", "content": "x"}], max_tokens=0)
    raise SystemExit("max_tokens 0 was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400

bad = openai.OpenAI(base_url=sys.argv[1], api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass

# structured output: the client's parse() with a pydantic model (response_format json_schema,
# strict), checked by jsonschema independently of the server
import json
from typing import Literal

import jsonschema
from pydantic import BaseModel, Field


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int = Field(ge=0, le=120)
    member: bool


parsed = client.chat.completions.parse(
    model="qwen-coder",
    messages=[{"role": "user", "content": "Ada, 36, is a member."}],
    response_format=Person,
    max_tokens=200,
)
choice = parsed.choices[0]
assert choice.finish_reason == "stop", choice
assert isinstance(choice.message.parsed, Person), choice.message
jsonschema.validate(json.loads(choice.message.content), Person.model_json_schema())

obj = client.chat.completions.create(
    model="qwen-coder",
    messages=[{"role": "user", "content": "any object"}],
    response_format={"type": "json_object"},
    max_tokens=200,
)
if obj.choices[0].finish_reason == "stop":
    assert isinstance(json.loads(obj.choices[0].message.content), dict), obj.choices[0].message.content

try:
    client.chat.completions.create(
        model="qwen-coder",
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}},
    )
    raise SystemExit("a schema that does not compile was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["param"] == "response_format", e.body

# tools: a required call of a tool defined from a pydantic model, parsed by the client
class GetWeather(BaseModel):
    # closed choices: the mock backend is a random model, which may take a free string long
    city: Literal["Oslo", "Paris"]
    unit: Literal["c", "f"]


tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
called = client.chat.completions.parse(
    model="qwen-coder",
    messages=[{"role": "user", "content": "weather in Oslo?"}],
    tools=[tool],
    tool_choice="required",
    parallel_tool_calls=False,
    max_tokens=400,
)
call_choice = called.choices[0]
assert call_choice.finish_reason == "tool_calls", call_choice
calls = call_choice.message.tool_calls
assert len(calls) == 1 and calls[0].function.name == "get_weather", calls
assert all(isinstance(c.function.parsed_arguments, GetWeather) for c in calls), calls
# the answer goes back as a tool message, and the conversation goes on
follow = client.chat.completions.create(
    model="qwen-coder",
    messages=[
        {"role": "user", "content": "weather in Oslo?"},
        call_choice.message.model_dump(exclude_none=True, exclude={"parsed"}),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "4 C, rain"},
    ],
    tools=[tool],
    max_tokens=8,
)
assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls"), follow

# n choices streamed: the chunks' indices tell them apart
texts = ["", ""]
for ev in client.chat.completions.create(
    model="qwen-coder",
    messages=[{"role": "user", "content": "hello there"}],
    max_tokens=10,
    temperature=0.9,
    seed=5,
    n=2,
    stream=True,
):
    for c in ev.choices:
        texts[c.index] += c.delta.content or ""
whole = client.chat.completions.create(
    model="qwen-coder", messages=[{"role": "user", "content": "hello there"}], max_tokens=10, temperature=0.9, seed=5, n=2
)
assert texts == [c.message.content for c in whole.choices], (texts, whole.choices)

assert [m.id for m in client.models.list()] == ["qwen-coder"]
print("openai client: ok")
