#!/usr/bin/env python3
"""The official `openai` and `anthropic` Python SDKs, unchanged, through Latchkey.

Only the base URL and the key change: each SDK is pointed at
`$LATCHKEY_URL/proxy/<provider>` with a Latchkey `lk_` key, and trusts
Latchkey's CA. Runs a plain and a streamed request with each SDK and checks
the exact content the test's mock upstream answers (see tests/it/proxy.rs,
`proxy_works_with_official_python_sdks`, which runs this script).

Environment:
  LATCHKEY_URL  e.g. https://localhost:8443 (no trailing slash)
  LATCHKEY_KEY  a Latchkey API key (lk_...) with scope proxy:openai and
                proxy:anthropic (or proxy:*)
  LATCHKEY_CA   path to Latchkey's CA certificate (DATA_DIR/tls/ca.pem)

Prints one line per check; exits non-zero on the first failure.
Install the SDKs with scripts/install-deps.sh.
"""

import os
import ssl
import sys
import traceback

try:
    import anthropic
    import openai
except ImportError as e:  # pragma: no cover - setup problem
    print(f"FAIL import: {e}; run scripts/install-deps.sh", file=sys.stderr)
    sys.exit(2)

URL = os.environ["LATCHKEY_URL"].rstrip("/")
KEY = os.environ["LATCHKEY_KEY"]
CA = os.environ["LATCHKEY_CA"]


def http_client(sdk):
    # The SDK's own default client class (httpx or its successor, whichever
    # this SDK version uses), trusting only Latchkey's CA and ignoring any
    # proxy settings in the environment: the traffic stays on loopback.
    ctx = ssl.create_default_context(cafile=CA)
    return sdk.DefaultHttpxClient(verify=ctx, trust_env=False, timeout=30.0)


def expect(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def openai_plain(client):
    r = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
    )
    expect("content", r.choices[0].message.content, "Hello!")
    expect("finish_reason", r.choices[0].finish_reason, "stop")
    expect("usage", (r.usage.prompt_tokens, r.usage.completion_tokens), (12, 3))
    return f"model={r.model} content={r.choices[0].message.content!r}"


def openai_stream(client):
    stream = client.chat.completions.create(
        model="gpt-4o-stream",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = []
    usage = None
    chunks = 0
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
        if chunk.usage is not None:
            usage = chunk.usage
    expect("streamed content", "".join(text), "firstsecond")
    if usage is None:
        raise AssertionError("no usage chunk (stream_options.include_usage)")
    expect("usage", (usage.prompt_tokens, usage.completion_tokens), (7, 2))
    return f"chunks={chunks} content={''.join(text)!r}"


def anthropic_plain(client):
    m = client.messages.create(
        model="claude-test",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
    )
    expect("content", [b.text for b in m.content], ["Hi"])
    expect("stop_reason", m.stop_reason, "end_turn")
    expect("usage", (m.usage.input_tokens, m.usage.output_tokens), (21, 5))
    return f"model={m.model} content={m.content[0].text!r}"


def anthropic_stream(client):
    # The SDK's high-level streaming helper: it parses every event type
    # (message_start, content_block_start/delta/stop, message_delta,
    # message_stop) and rebuilds the final message.
    with client.messages.stream(
        model="claude-stream",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    expect("streamed content", text, "Hi there")
    expect("final content", [b.text for b in final.content], ["Hi there"])
    expect("stop_reason", final.stop_reason, "end_turn")
    expect("usage", (final.usage.input_tokens, final.usage.output_tokens), (30, 11))
    # And the raw event iterator of messages.create(stream=True).
    raw = client.messages.create(
        model="claude-stream",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    kinds = [event.type for event in raw]
    want = [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    expect("event types", kinds, want)
    return f"events={len(kinds)} content={text!r}"


def main():
    print(f"openai {openai.__version__}, anthropic {anthropic.__version__}")
    oa = openai.OpenAI(
        base_url=f"{URL}/proxy/openai/v1",
        api_key=KEY,
        http_client=http_client(openai),
        max_retries=0,
    )
    an = anthropic.Anthropic(
        base_url=f"{URL}/proxy/anthropic",
        api_key=KEY,
        http_client=http_client(anthropic),
        max_retries=0,
    )
    checks = [
        ("openai plain", lambda: openai_plain(oa)),
        ("openai stream", lambda: openai_stream(oa)),
        ("anthropic plain", lambda: anthropic_plain(an)),
        ("anthropic stream", lambda: anthropic_stream(an)),
    ]
    failed = 0
    for name, check in checks:
        try:
            print(f"ok   {name}: {check()}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
    if failed:
        print(f"{failed} of {len(checks)} SDK checks failed", flush=True)
        sys.exit(1)
    print(f"all {len(checks)} SDK checks passed", flush=True)


if __name__ == "__main__":
    main()
