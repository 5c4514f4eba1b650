#!/usr/bin/env python3
"""Realtime (WebSocket) clients through Latchkey, for tests/it/realtime.rs.

Subcommands (one per run):

  openai     the official `openai` SDK's realtime client (its `realtime`
             extra), pointed at $LATCHKEY_URL/proxy/openai/v1 with the
             Latchkey key: opens a session, updates it, asks for a response
             and waits for `response.done`; prints its usage.
  deepgram   the official `deepgram-sdk` live client, pointed at
             $LATCHKEY_URL/proxy/deepgram: streams five audio frames,
             receives the transcripts, closes the stream.
  raw SPEC   a bare `websockets` client for the refusals and limits: SPEC
             is JSON {"path", "headers", "subprotocols", "then"}; prints
             `status N BODY` when the handshake is refused, else `open
             SUBPROTOCOL`, then per `then`: "hold" waits for the server to
             close, "close:N" asks the mock upstream to close with code N,
             "big:N" sends a text message of N bytes, "upbig:N" asks the
             upstream for one; each ends with `closed CODE REASON` (the
             close frame the client received).

Environment: LATCHKEY_URL, LATCHKEY_KEY, LATCHKEY_CA (as check_sdks.py).
Prints `ok …` lines; exits non-zero on failure.
"""

import asyncio
import json
import os
import ssl
import sys
import threading
import time
import traceback

URL = os.environ["LATCHKEY_URL"].rstrip("/")
KEY = os.environ["LATCHKEY_KEY"]
CA = os.environ["LATCHKEY_CA"]
WS_URL = "wss://" + URL.split("://", 1)[1]


def ssl_ctx():
    return ssl.create_default_context(cafile=CA)


def expect(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")


def run_openai():
    import openai

    client = openai.OpenAI(
        api_key=KEY,
        base_url=f"{URL}/proxy/openai/v1",
        http_client=openai.DefaultHttpxClient(verify=ssl_ctx(), trust_env=False),
    )
    seen = []
    with client.realtime.connect(
        model="gpt-realtime-mock",
        websocket_connection_options={"ssl": ssl_ctx()},
        max_retries=0,
    ) as conn:
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
        )
        conn.response.create()
        text = ""
        for event in conn:
            seen.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
            if event.type == "response.done":
                u = event.response.usage
                expect("text", text, "Hello from the mock")
                expect("usage", (u.input_tokens, u.output_tokens), (120, 225))
                expect(
                    "audio",
                    (u.input_token_details.audio_tokens, u.output_token_details.audio_tokens),
                    (100, 200),
                )
                break
    expect("first event", seen[0], "session.created")
    print(f"ok   openai realtime session events={','.join(seen)}", flush=True)


def run_deepgram():
    from deepgram import DeepgramClient
    from deepgram.core.events import EventType
    from deepgram.environment import DeepgramClientEnvironment

    # The SDK's WebSocket (the `websockets` library) uses the default TLS
    # context, which reads SSL_CERT_FILE: trust Latchkey's CA only.
    os.environ["SSL_CERT_FILE"] = CA
    transcripts = []
    done = threading.Event()
    env = DeepgramClientEnvironment(
        base=f"{URL}/proxy/deepgram",
        production=f"{WS_URL}/proxy/deepgram",
        agent=f"{WS_URL}/proxy/deepgram",
        agent_rest=f"{URL}/proxy/deepgram",
    )
    client = DeepgramClient(api_key=KEY, environment=env, reconnect=False)
    with client.listen.v1.connect(model="nova-3", encoding="linear16", sample_rate=16000) as conn:
        def on_message(m):
            if getattr(m, "type", None) == "Results":
                transcripts.append(m.channel.alternatives[0].transcript)
                if len(transcripts) == 5:
                    done.set()

        conn.on(EventType.MESSAGE, on_message)
        conn.on(EventType.ERROR, lambda e: print(f"deepgram error: {e}", flush=True))
        listener = threading.Thread(target=conn.start_listening, daemon=True)
        listener.start()
        for _ in range(5):
            conn.send_media(b"\x00\x01" * 1600)
            time.sleep(0.05)
        if not done.wait(10):
            raise AssertionError(f"transcripts: {transcripts}")
        conn.send_close_stream()
        listener.join(5)
    expect("transcripts", transcripts, ["hello from the mock"] * 5)
    print(f"ok   deepgram live transcripts={len(transcripts)}", flush=True)


async def run_raw(spec):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    headers = spec.get("headers", {})
    try:
        ws = await connect(
            WS_URL + spec["path"],
            ssl=ssl_ctx(),
            additional_headers=headers,
            subprotocols=spec.get("subprotocols") or None,
            origin=headers.pop("Origin", None) if "Origin" in headers else None,
            compression=None,
            max_size=None,
            open_timeout=10,
        )
    except InvalidStatus as e:
        body = e.response.body.decode("utf-8", "replace") if e.response.body else ""
        print(f"status {e.response.status_code} {body}", flush=True)
        return
    print(f"open {ws.subprotocol}", flush=True)
    then = spec.get("then", "hold")
    try:
        if then.startswith("close:"):
            await ws.send(json.dumps({"type": "test.close", "code": int(then[6:])}))
        elif then.startswith("big:"):
            await ws.send("y" * int(then[4:]))
        elif then.startswith("upbig:"):
            await ws.send(json.dumps({"type": "test.big", "size": int(then[6:])}))
        while True:
            await asyncio.wait_for(ws.recv(), timeout=30)
    except ConnectionClosed as e:
        rcvd = e.rcvd
        code = rcvd.code if rcvd else None
        reason = rcvd.reason if rcvd else ""
        print(f"closed {code} {reason}", flush=True)


def main():
    cmd = sys.argv[1]
    try:
        if cmd == "openai":
            run_openai()
        elif cmd == "deepgram":
            run_deepgram()
        elif cmd == "raw":
            asyncio.run(run_raw(json.loads(sys.argv[2])))
        else:
            raise SystemExit(f"unknown subcommand {cmd}")
    except Exception:
        print(f"FAIL {cmd}", flush=True)
        traceback.print_exc()
        sys.exit(1)


if __name__ == "__main__":
    main()
