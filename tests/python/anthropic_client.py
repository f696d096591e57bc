"""The official `anthropic` client against a running llama-dms server (started by
tests/openai_python.rs).

Usage: python anthropic_client.py BASE_URL IMAGE_PNG
Asks about a base64 image with a system prompt, plainly and streamed: the message has text,
usage and a stop reason, and the stream's text equals the plain answer at temperature 0. Any
model name is accepted (the server serves its one model); bad input is an Anthropic error.
"""
import base64
import sys

import anthropic

base_url, image_path = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base_url, api_key="test-key")
with open(image_path, "rb") as f:
    data = base64.b64encode(f.read()).decode()
common = dict(
    model="claude-sonnet-4-5",
    max_tokens=12,
    # (This client version has no `temperature` argument; the field goes in the body.)
    extra_body={"temperature": 0},
    system="You answer briefly.",
    messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What is the main color of this image?"},
    ]}],
)
message = client.messages.create(**common)
assert message.type == "message" and message.role == "assistant", message
text = "".join(block.text for block in message.content if block.type == "text")
assert text, "empty answer"
assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0, message.usage
assert message.stop_reason in ("end_turn", "max_tokens"), message.stop_reason

with client.messages.stream(**common) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == text, (streamed, text)
assert final.stop_reason == message.stop_reason, final.stop_reason
assert final.usage.output_tokens == message.usage.output_tokens, final.usage

try:
    client.messages.create(**{**common, "max_tokens": -1})
    raise AssertionError("a negative max_tokens was accepted")
except anthropic.BadRequestError as e:
    assert e.body["type"] == "error" and e.body["error"]["type"] == "invalid_request_error", e.body
    assert e.body["error"]["param"] == "max_tokens", e.body

print(f"ok: {text!r}")
