"""The official `openai` client against a running llama-dms server (started by tests/openai_python.rs).

Usage: python openai_client.py BASE_URL IMAGE_PNG
Checks a non-streaming and a streaming chat with an image (usage included), and that the streamed
text equals the non-streamed text at temperature 0 with the same seed; then the Responses API
(`input_image` and `input_text`, plainly and streamed).
"""
import base64
import sys

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

print("ok:", repr(text))
