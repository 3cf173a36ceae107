"""gemini-flux driven by client libraries nobody here wrote: google-genai and
openai, each switched over by its base URL alone. Run by .ci/sdk.sh against
`gemini-flux demo` (FLUX_URL, FLUX_TOKEN in the environment)."""

import os
import time

import openai
import pytest
from google import genai
from google.genai import errors, types

BASE = os.environ["FLUX_URL"]
TOKEN = os.environ["FLUX_TOKEN"]
MODEL = "gemini-2.5-flash"
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
