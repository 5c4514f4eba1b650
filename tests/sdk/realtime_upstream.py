#!/usr/bin/env python3
"""A mock realtime upstream on loopback for tests/it/realtime.rs.

Speaks, over plain WebSocket (the `websockets` library, an implementation
independent of Latchkey's), just enough of two providers' protocols for
their official SDKs to complete a session:

- OpenAI Realtime (`/v1/realtime?model=…`): `session.created` on connect,
  `session.updated` for `session.update`, and for `response.create` a
  `response.created`, a text delta and a `response.done` whose `usage`
  splits text and audio tokens (120 in: 100 audio; 225 out: 200 audio).
  A client event `{"type": "test.close", "code": N}` makes it close with
  code N, reason "bye" (close codes must pass through).
- Deepgram live transcription (`/v1/listen`): a `Results` message with the
  transcript "hello from the mock" for every binary (audio) frame, and
  `Metadata` then a normal close for `{"type": "CloseStream"}`.

Every handshake is appended to $MOCK_LOG as one JSON line
(`{"path", "headers", "subprotocol"}`), so the test can check what reached
the upstream. Prints `port N` once listening; runs until killed.
"""

import asyncio
import json
import os
import sys

from websockets.asyncio.server import serve

LOG = os.environ["MOCK_LOG"]

USAGE = {
    "total_tokens": 345,
    "input_tokens": 120,
    "output_tokens": 225,
    "input_token_details": {"cached_tokens": 0, "text_tokens": 20, "audio_tokens": 100},
    "output_token_details": {"text_tokens": 25, "audio_tokens": 200},
}


def log(ws):
    req = ws.request
    entry = {
        "path": req.path,
        "headers": {k.lower(): v for k, v in req.headers.raw_items()},
        "subprotocol": ws.subprotocol,
    }
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


async def openai(ws, model):
    n = 0

    def eid():
        nonlocal n
        n += 1
        return f"event_{n}"

    session = {
        "id": "sess_mock",
        "object": "realtime.session",
        "type": "realtime",
        "model": model,
        "output_modalities": ["text"],
    }
    await ws.send(json.dumps({"type": "session.created", "event_id": eid(), "session": session}))
    async for raw in ws:
        ev = json.loads(raw)
        t = ev.get("type")
        if t == "session.update":
            await ws.send(json.dumps({"type": "session.updated", "event_id": eid(), "session": session}))
        elif t == "response.create":
            resp = {"id": "resp_1", "object": "realtime.response", "status": "in_progress", "output": []}
            await ws.send(json.dumps({"type": "response.created", "event_id": eid(), "response": resp}))
            await ws.send(json.dumps({
                "type": "response.output_text.delta", "event_id": eid(), "response_id": "resp_1",
                "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "Hello from the mock",
            }))
            done = dict(resp, status="completed", usage=USAGE, output=[{
                "id": "item_1", "type": "message", "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello from the mock"}],
            }])
            await ws.send(json.dumps({"type": "response.done", "event_id": eid(), "response": done}))
        elif t == "test.close":
            await ws.close(code=int(ev.get("code", 1000)), reason="bye")
            return
        elif t == "test.big":
            # A server message larger than the client asked to allow.
            await ws.send("x" * int(ev.get("size", 1)))


async def deepgram(ws):
    audio = 0
    async for raw in ws:
        if isinstance(raw, bytes):
            audio += len(raw)
            await ws.send(json.dumps({
                "type": "Results", "channel_index": [0, 1], "duration": 0.5, "start": 0.0,
                "is_final": True, "speech_final": True, "from_finalize": False,
                "channel": {"alternatives": [{"transcript": "hello from the mock",
                                              "confidence": 0.99, "words": []}]},
                "metadata": {"request_id": "req-mock", "model_info": {"name": "nova-3", "version": "1", "arch": "mock"},
                             "model_uuid": "00000000-0000-0000-0000-000000000000"},
            }))
        else:
            ev = json.loads(raw)
            if ev.get("type") == "CloseStream":
                await ws.send(json.dumps({
                    "type": "Metadata", "transaction_key": "deprecated", "request_id": "req-mock",
                    "sha256": "0" * 64, "created": "2026-12-07T00:00:00.000Z", "duration": 0.5,
                    "channels": 1, "models": [], "model_info": {},
                }))
                await ws.close(code=1000, reason="done")
                return


async def handler(ws):
    log(ws)
    path = ws.request.path
    if path.startswith("/v1/realtime"):
        from urllib.parse import parse_qs, urlparse

        model = parse_qs(urlparse(path).query).get("model", ["unknown"])[0]
        await openai(ws, model)
    elif path.startswith("/v1/listen"):
        await deepgram(ws)
    else:
        await ws.close(code=1008, reason="unknown path")


def select_protocol(ws, offered):
    # Deepgram and OpenAI pick nothing unless asked; the mock picks the
    # first offered, so the test sees what reached it.
    return offered[0] if offered else None


async def main():
    async with serve(handler, "127.0.0.1", 0, select_subprotocol=select_protocol,
                     compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"port {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
