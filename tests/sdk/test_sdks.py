"""gemini-flux driven by client libraries nobody here wrote: google-genai and
openai, each switched over by its base URL alone. Run by .ci/sdk.sh against
`gemini-flux demo` (FLUX_URL, FLUX_TOKEN in the environment)."""

import os

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
