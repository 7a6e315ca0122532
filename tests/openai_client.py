"""Drive `ferroq serve` with the official OpenAI Python client (tests/serve.rs runs this).

Usage: python openai_client.py BASE_URL MODEL PROMPT CHAT_PROMPT MAX_TOKENS
Prints one JSON object: the completion, the chat completion and the streamed chat completion
(text, finish reason, usage, chunk count), all greedy.
"""
import json
import sys

import openai

base, model, prompt, chat_prompt, max_tokens = sys.argv[1:6]
max_tokens = int(max_tokens)
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
out = {"openai_version": openai.__version__}

c = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
out["completion"] = {
    "text": c.choices[0].text,
    "finish_reason": c.choices[0].finish_reason,
    "completion_tokens": c.usage.completion_tokens,
    "prompt_tokens": c.usage.prompt_tokens,
}

messages = [{"role": "user", "content": chat_prompt}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, temperature=0)
out["chat"] = {
    "text": r.choices[0].message.content,
    "role": r.choices[0].message.role,
    "finish_reason": r.choices[0].finish_reason,
    "completion_tokens": r.usage.completion_tokens,
}

stream = client.chat.completions.create(
    model=model,
    messages=messages,
    max_tokens=max_tokens,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage, n = [], None, None, 0
for chunk in stream:
    n += 1
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
    for ch in chunk.choices:
        if ch.delta.content:
            pieces.append(ch.delta.content)
        if ch.finish_reason:
            finish = ch.finish_reason
out["chat_stream"] = {"text": "".join(pieces), "finish_reason": finish, "completion_tokens": usage, "chunks": n}

models = client.models.list()
out["models"] = [m.id for m in models.data]
print(json.dumps(out))
