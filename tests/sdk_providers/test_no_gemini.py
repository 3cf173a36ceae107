"""Other providers with no Gemini key, through the official openai and
anthropic SDKs (run by .ci/providers.sh): an OpenAI-compatible simulator
with 2 keys at 5 requests a minute, an Anthropic one with 1 key at 2,000
output tokens a minute, gemini-flux in front with only a providers file."""

import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai

BASE = os.environ["FLUX_URL"]
TOKEN = os.environ["FLUX_TOKEN"]
PROMPT = "x" * 2000  # 500 input tokens in the simulator


def stats(sim):
    with urllib.request.urlopen(f"{sim}/__sim/stats") as answer:
        return json.load(answer)


def test_both_providers_at_once_finish_in_one_window_with_no_429():
    chat = openai.OpenAI(api_key=TOKEN, base_url=f"{BASE}/v1", max_retries=0, timeout=120)
    claude = anthropic.Anthropic(api_key=TOKEN, base_url=BASE, max_retries=0, timeout=120)

    def one_chat(_):
        answer = chat.chat.completions.create(
            model="llama-3.3-70b-versatile", messages=[{"role": "user", "content": PROMPT}]
        )
        return answer.choices[0].message.content

    def one_message(_):
        message = claude.messages.create(
            model="claude-haiku-4-5", max_tokens=500, messages=[{"role": "user", "content": "Say hello."}]
        )
        return message.content[0].text

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=18) as pool:
        chats = pool.map(one_chat, range(12))
        messages = pool.map(one_message, range(6))
        answers = list(chats) + list(messages)
    elapsed = time.monotonic() - started
    assert all(a.startswith("ok:") for a in answers), answers
    # Ten chats and four messages in the first window, the rest after it:
    # one minute plus the guard (250 ms), and little more.
    assert 60.0 <= elapsed < 70.0, elapsed
    assert stats(os.environ["GROQ_SIM"])["rejected_429"] == 0
    assert stats(os.environ["CLAUDE_SIM"])["rejected_429"] == 0
    assert stats(os.environ["GROQ_SIM"])["calls"] == 12
    assert stats(os.environ["CLAUDE_SIM"])["calls"] == 6
