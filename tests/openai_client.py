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

assert [m.id for m in client.models.list()] == ["qwen-coder"]
print("openai client: ok")
