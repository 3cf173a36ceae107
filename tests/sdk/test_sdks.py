"""gemini-flux driven by client libraries nobody here wrote: google-genai,
openai and anthropic, each switched over by its base URL alone (the demo's
other providers: `groq`, OpenAI-compatible, and `claude`, Anthropic). Run by .ci/sdk.sh against
`gemini-flux demo` (FLUX_URL, FLUX_TOKEN in the environment). The last test
reads /metrics: not one upstream call of the whole run drew a 429."""

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors, types

BASE = os.environ["FLUX_URL"]
TOKEN = os.environ["FLUX_TOKEN"]
MODEL = "gemini-2.5-flash"
GEMINI_3 = "gemini-3-flash-preview"
EMBED = "gemini-embedding-001"
PROMPT = "abcdefgh"  # 8 characters: 2 tokens in the simulator


def gemini(token=TOKEN):
    return genai.Client(api_key=token, http_options=types.HttpOptions(base_url=BASE))


def chat(token=TOKEN):
    return openai.OpenAI(api_key=token, base_url=f"{BASE}/v1")


# google-genai closes its HTTP client when the Client object goes away, so
# each test holds its client while it uses it.


def test_genai_generates():
    client = gemini()
    answer = client.models.generate_content(model=MODEL, contents=PROMPT)
    assert answer.text == "ok:2"
    assert answer.usage_metadata.prompt_token_count == 2


def test_genai_streams():
    client = gemini()
    chunks = list(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert len(chunks) >= 2
    assert "".join(c.text or "" for c in chunks) == "ok:2"
    assert chunks[-1].usage_metadata.prompt_token_count == 2


def test_genai_counts_tokens():
    client = gemini()
    assert client.models.count_tokens(model=MODEL, contents=PROMPT).total_tokens == 2


def test_genai_with_a_wrong_token_is_refused():
    client = gemini("not-the-token")
    with pytest.raises(errors.ClientError) as refused:
        client.models.generate_content(model=MODEL, contents=PROMPT)
    assert refused.value.code == 401


def test_genai_runs_a_batch():
    client = gemini()
    # Item n counts n tokens in the simulator, so its answer is ok:n.
    src = [{"contents": [{"role": "user", "parts": [{"text": "abcd" * n}]}]} for n in (1, 2, 3)]
    job = client.batches.create(model=MODEL, src=src, config={"display_name": "sdk batch"})
    assert job.name.startswith("batches/")
    assert job.display_name == "sdk batch"
    deadline = time.time() + 30
    while job.state.name not in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
        assert time.time() < deadline, job.state
        time.sleep(0.2)
        job = client.batches.get(name=job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    assert [r.response.text for r in job.dest.inlined_responses] == ["ok:1", "ok:2", "ok:3"]
    assert job.name in [j.name for j in client.batches.list(config={"page_size": 5})]
    client.batches.cancel(name=job.name)  # ended already: nothing changes
    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError) as gone:
        client.batches.get(name=job.name)
    assert gone.value.code == 404


def test_openai_chats():
    answer = chat().chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "abcd"}, {"role": "user", "content": PROMPT}],
    )
    assert answer.choices[0].message.content == "ok:3"
    assert answer.usage.prompt_tokens == 3


def test_openai_streams_chat():
    stream = chat().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "ok:2"
    assert chunks[-1].usage.prompt_tokens == 2


def test_openai_with_a_wrong_token_is_refused():
    with pytest.raises(openai.AuthenticationError):
        chat("not-the-token").chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])


def test_genai_embeds_three_contents():
    client = gemini()
    answer = client.models.embed_content(model=EMBED, contents=["alpha", "beta", "gamma"])
    vectors = [e.values for e in answer.embeddings]
    assert len(vectors) == 3
    assert all(len(v) == 3072 for v in vectors)
    assert vectors[0] != vectors[1]


def test_genai_concurrent_embeddings_are_all_served():
    # The light version of tests/embeddings.rs's six batches of three: here
    # on the demo's four keys at the built-in 100 RPM, in real time.
    client = gemini()
    texts = [[f"batch {i} text {j}" for j in range(3)] for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda c: client.models.embed_content(model=EMBED, contents=c), texts))
    assert [len(a.embeddings) for a in answers] == [3] * 6
    alone = client.models.embed_content(model=EMBED, contents="batch 5 text 2")
    assert answers[5].embeddings[2].values == alone.embeddings[0].values


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_openai_chat_with_tools_returns_the_tool_call():
    answer = chat().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER]
    )
    call = answer.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sim"}


def test_openai_streamed_tool_call_yields_its_name():
    stream = chat().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER], stream=True
    )
    names = [
        call.function.name
        for chunk in stream
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or []
        if call.function and call.function.name
    ]
    assert names == ["get_weather"]


def test_openai_agent_loop_keeps_the_thought_signature():
    client = chat()
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=GEMINI_3, messages=messages, tools=[WEATHER])
    assistant = first.choices[0].message
    assert assistant.tool_calls[0].function.name == "get_weather"
    # The SDK's own message object goes back as it came, signature and all.
    messages += [assistant, {"role": "tool", "tool_call_id": assistant.tool_calls[0].id, "content": "sunny"}]
    answer = client.chat.completions.create(model=GEMINI_3, messages=messages, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content.startswith("ok:")


def test_genai_calls_a_python_function_and_answers_with_its_result():
    # google-genai's automatic function calling: the model's call, the
    # function run here, its result sent back (with gemini-3's signature).
    called = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return "sunny"

    client = gemini()
    answer = client.models.generate_content(
        model=GEMINI_3, contents="Weather in Paris?", config=types.GenerateContentConfig(tools=[get_weather])
    )
    assert called == ["sim"]
    assert answer.text.startswith("ok:")


def test_openai_embeddings_give_one_vector_per_input():
    answer = chat().embeddings.create(model=EMBED, input=["alpha", "beta", "gamma"])
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert all(len(d.embedding) == 3072 for d in answer.data)


def test_genai_files_are_read_by_the_key_that_uploaded_them(tmp_path):
    """A file belongs to the project of the key that uploaded it: gemini-flux
    picks that key for the upload and sends every call naming the file to it.
    The simulator answers 403 to any other key, and gemini-flux never retries
    a 403 elsewhere, so nine 200s on one key are zero cross-key uses."""
    client = gemini()
    notes = tmp_path / "notes.txt"
    notes.write_text("The quarterly numbers are up.")
    uploaded = client.files.upload(file=str(notes))
    assert uploaded.name.startswith("files/")
    assert uploaded.size_bytes == 29
    assert uploaded.mime_type == "text/plain"

    keys = []
    for _ in range(9):
        answer = client.models.generate_content(model=MODEL, contents=[uploaded, PROMPT])
        assert answer.text.startswith("ok:")
        keys.append(answer.sdk_http_response.headers["x-flux-key"])
    assert len(set(keys)) == 1, keys

    assert client.files.get(name=uploaded.name).size_bytes == 29
    assert uploaded.name in [f.name for f in client.files.list()]
    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as gone:
        client.files.get(name=uploaded.name)
    assert gone.value.code == 403


GROQ = "groq/llama-3.1-8b-instant"
CLAUDE = "claude-haiku-4-5"


def claude(token=TOKEN):
    return anthropic.Anthropic(api_key=token, base_url=BASE)


def test_openai_sdk_reaches_another_provider_by_its_model():
    answer = chat().chat.completions.with_raw_response.create(
        model=GROQ, messages=[{"role": "user", "content": PROMPT}]
    )
    completion = answer.parse()
    assert completion.choices[0].message.content.startswith("ok:")
    assert completion.usage.prompt_tokens > 0
    assert answer.headers["x-flux-model"] == GROQ
    streamed = chat().chat.completions.create(
        model=GROQ, messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text.startswith("ok:")


def test_anthropic_sdk_sends_messages_whole_and_streamed():
    client = claude()
    message = client.messages.create(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert message.content[0].text.startswith("ok:")
    assert message.usage.output_tokens > 0
    with client.messages.stream(
        model=CLAUDE, max_tokens=100, messages=[{"role": "user", "content": "Say hello."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.startswith("ok:")
    assert final.usage.output_tokens > 0
    assert "claude/claude-haiku-4-5" in [m.id for m in client.models.list()]


def test_anthropic_sdk_gets_its_own_errors():
    with pytest.raises(anthropic.NotFoundError):
        claude().messages.create(model="claude-nope", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.AuthenticationError):
        claude(token="wrong").messages.create(model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_no_upstream_call_drew_a_429():
    # Last in the file: every call above went through, none over a quota.
    request = urllib.request.Request(f"{BASE}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as answer:
        text = answer.read().decode()
    calls = [line for line in text.splitlines() if line.startswith("flux_upstream_calls_total")]
    assert calls, text
    assert not [line for line in calls if 'outcome="429' in line], calls
