"""The official `openai` client against a running llama-dms server (started by tests/openai_python.rs).

Usage: python openai_client.py BASE_URL IMAGE_PNG
Checks a non-streaming and a streaming chat with an image (usage included), and that the streamed
text equals the non-streamed text at temperature 0 with the same seed; then the Responses API
(`input_image` and `input_text`, plainly and streamed); tool calls (a named function, plainly
and streamed, its arguments parsing and matching the schema; a tool result in the history; bad
tools refused naming the field); `n=2`; a `logit_bias` of -100.
"""
import base64
import json
import sys
import urllib.request

import openai

from openai import OpenAI

base_url, image_path = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key="test-key")
model = client.models.list().data[0].id
with open(image_path, "rb") as f:
    url = "data:image/png;base64," + base64.b64encode(f.read()).decode()
messages = [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": url}},
    {"type": "text", "text": "What is the main color of this image?"},
]}]
common = dict(model=model, messages=messages, temperature=0, seed=7, max_tokens=16)

plain = client.chat.completions.create(**common)
text = plain.choices[0].message.content
assert text, "empty answer"
assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens > 0, plain.usage
assert plain.choices[0].finish_reason in ("stop", "length")

pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(**common, stream=True, stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(pieces)
assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens, usage
assert finish == plain.choices[0].finish_reason, finish
assert streamed == text, (streamed, text)

extra = client.chat.completions.create(**common, extra_body={"dms": {"mode": "fixed", "weights": {"images": [0.5], "text": 1.0}}})
assert extra.model_extra["dms"]["weights"]["images"] == [0.5], extra.model_extra

# Any model name is accepted with one model (the answer names the served one).
other = client.chat.completions.create(**{**common, "model": "gpt-4o"})
assert other.model == model, other.model

# The Responses API, plainly and streamed, about the same image.
inputs = [{"role": "user", "content": [
    {"type": "input_image", "image_url": url},
    {"type": "input_text", "text": "What is the main color of this image?"},
]}]
resp_args = dict(model="gpt-4o", input=inputs, instructions="Answer briefly.", temperature=0,
                 max_output_tokens=12)
response = client.responses.create(**resp_args)
assert response.status in ("completed", "incomplete"), response.status
assert response.output_text, response
assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0, response.usage
deltas, completed = [], None
for event in client.responses.create(**resp_args, stream=True):
    if event.type == "response.output_text.delta":
        deltas.append(event.delta)
    if event.type in ("response.completed", "response.incomplete"):
        completed = event.response
assert "".join(deltas) == response.output_text, (deltas, response.output_text)
assert completed is not None and completed.output_text == response.output_text, completed

# Tool calls: a named function, constrained by its schema, plainly and streamed.
weather = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Rome"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
tool_args = dict(model=model, messages=ask, tools=[weather], temperature=0, seed=3, max_tokens=256,
                 tool_choice={"type": "function", "function": {"name": "get_weather"}})
called = client.chat.completions.create(**tool_args)
choice = called.choices[0]
assert choice.finish_reason == "tool_calls", choice
assert choice.message.content is None, choice.message
(call,) = choice.message.tool_calls
assert call.type == "function" and call.function.name == "get_weather", call
arguments = json.loads(call.function.arguments)
assert arguments["city"] in ("Paris", "Oslo", "Rome") and arguments["unit"] in ("celsius", "fahrenheit"), arguments
assert call.id.startswith("call_"), call.id

names, fragments, ids, finish = [], [], [], None
for chunk in client.chat.completions.create(**tool_args, stream=True):
    for c in chunk.choices:
        for part in c.delta.tool_calls or []:
            assert part.index == 0, part
            if part.id:
                ids.append(part.id)
            if part.function and part.function.name:
                names.append(part.function.name)
            if part.function and part.function.arguments:
                fragments.append(part.function.arguments)
        if c.finish_reason:
            finish = c.finish_reason
assert finish == "tool_calls" and names == ["get_weather"] and len(ids) == 1, (finish, names, ids)
assert json.loads("".join(fragments)) == arguments, (fragments, arguments)

# The call and its result in the history: the model answers in text (tool_choice none).
history = ask + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": "12 degrees, light rain"},
]
after = client.chat.completions.create(model=model, messages=history, tools=[weather], tool_choice="none",
                                       temperature=0, max_tokens=12)
assert after.choices[0].message.tool_calls is None and after.choices[0].message.content, after

# Bad tool input is a 400 naming the field.
for bad, param in [
    (dict(tools=[{"type": "function", "function": {"name": "no spaces"}}]), "tools[0].function.name"),
    (dict(tools=[weather], tool_choice={"type": "function", "function": {"name": "missing"}}), "tool_choice"),
    (dict(tools=[weather], tool_choice="sometimes"), "tool_choice"),
]:
    try:
        client.chat.completions.create(model=model, messages=ask, max_tokens=4, **bad)
        raise AssertionError(f"accepted {bad}")
    except openai.BadRequestError as e:
        assert e.body["param"] == param, (e.body, param)

# Two choices side by side, and a token kept out by logit_bias.
two = client.chat.completions.create(**{**common, "n": 2, "temperature": 0.8})
assert [c.index for c in two.choices] == [0, 1], two.choices
first_token = client.completions.create(model=model, prompt="The colour red", max_tokens=1, temperature=0,
                                        logprobs=1)
banned = first_token.choices[0].text
root = base_url.rstrip("/").removesuffix("/v1")
tokenize = urllib.request.Request(root + "/tokenize", data=json.dumps({"content": banned}).encode(),
                                  headers={"Authorization": "Bearer test-key", "Content-Type": "application/json"})
tokens = json.load(urllib.request.urlopen(tokenize))["tokens"]
biased = client.completions.create(model=model, prompt="The colour red", max_tokens=1, temperature=0,
                                   logit_bias={str(tokens[0]): -100})
assert biased.choices[0].text != banned, (banned, biased.choices[0].text)

print("ok:", repr(text))
