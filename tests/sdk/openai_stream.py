#!/usr/bin/env python3
"""The official `openai` Python SDK, unchanged, streaming through Latchkey.

Used by tests/it/reverse_proxy.rs with Latchkey behind a real Caddy: only
the base URL (`$LATCHKEY_URL/proxy/openai/v1`, the proxy's https origin) and
the key change, and the SDK trusts only the CA in `LATCHKEY_CA` (Caddy's
internal root). Streams one chat completion from the test's mock upstream
(tests/it/proxy.rs `Mock`: "first", a 1.5 s pause, "second", then usage)
and records when each piece arrived, so the test can tell a stream relayed
as it came from one buffered by a proxy on the way.

Environment:
  LATCHKEY_URL  e.g. https://localhost:8443 (no trailing slash)
  LATCHKEY_KEY  a Latchkey API key (lk_...) with scope proxy:openai
  LATCHKEY_CA   the CA certificate to trust (PEM); empty for a plain
                http:// loopback URL (the desktop app's proxy)

Prints `ok   ...` lines and a last `stream-timing: {json}` line; exits
non-zero on the first failure.
"""

import json
import os
import ssl
import sys
import time

try:
    import openai
except ImportError as e:  # pragma: no cover - setup problem
    print(f"FAIL import: {e}; run scripts/install-deps.sh", file=sys.stderr)
    sys.exit(2)

URL = os.environ["LATCHKEY_URL"].rstrip("/")
KEY = os.environ["LATCHKEY_KEY"]
CA = os.environ["LATCHKEY_CA"]


def main():
    print(f"openai {openai.__version__}", flush=True)
    # The SDK's own default client class, trusting only the given CA and
    # ignoring proxy settings in the environment: traffic stays on loopback.
    ctx = ssl.create_default_context(cafile=CA) if CA else True
    client = openai.OpenAI(
        base_url=f"{URL}/proxy/openai/v1",
        api_key=KEY,
        http_client=openai.DefaultHttpxClient(verify=ctx, trust_env=False, timeout=30.0),
        max_retries=0,
    )

    r = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
    )
    if r.choices[0].message.content != "Hello!":
        raise SystemExit(f"FAIL plain: content {r.choices[0].message.content!r}")
    print(f"ok   plain: model={r.model} content={r.choices[0].message.content!r}", flush=True)

    start = time.monotonic()
    stream = client.chat.completions.create(
        model="gpt-4o-stream",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(
                    {"text": choice.delta.content, "at_ms": round((time.monotonic() - start) * 1000)}
                )
        if chunk.usage is not None:
            usage = chunk.usage
    text = "".join(p["text"] for p in pieces)
    if text != "firstsecond":
        raise SystemExit(f"FAIL stream: content {text!r}")
    if usage is None or (usage.prompt_tokens, usage.completion_tokens) != (7, 2):
        raise SystemExit(f"FAIL stream: usage {usage!r}")
    print(f"ok   stream: content={text!r} pieces={len(pieces)}", flush=True)
    print("stream-timing: " + json.dumps(pieces), flush=True)


if __name__ == "__main__":
    main()
