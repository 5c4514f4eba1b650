#!/usr/bin/env python3
"""Verifies a LiveKit token with the official `livekit-api` package.

Reads one JSON object on standard input (the secret never goes in argv):
  {"api_key": ..., "secret": ..., "token": ..., "leeway": seconds}

and prints one JSON object: what `livekit.api.TokenVerifier(api_key,
secret, leeway=...)` makes of the token (`ok`, `identity`, `name`,
`video` as the package's `VideoGrants` fields, and `exp`/`nbf` read from
the verified payload), or `ok: false` with the verifier's exception class.
It also reports what the verifier says when given a wrong secret and a
wrong API key (`wrong_secret`, `wrong_api_key`: the exception class, or
"accepted"). Driven by tests/it/livekit.rs; install the package with
scripts/install-deps.sh.
"""

import dataclasses
import datetime
import json
import sys

try:
    import jwt  # PyJWT, which livekit-api itself verifies with
    from livekit import api
except ImportError as e:  # pragma: no cover - setup problem
    print(f"FAIL import: {e}; run scripts/install-deps.sh", file=sys.stderr)
    sys.exit(2)


def verify(api_key, secret, token, leeway):
    verifier = api.TokenVerifier(
        api_key, secret, leeway=datetime.timedelta(seconds=leeway)
    )
    return verifier.verify(token)


def outcome(api_key, secret, token, leeway):
    try:
        verify(api_key, secret, token, leeway)
        return "accepted"
    except Exception as e:  # the class is the answer
        return type(e).__name__


def main():
    req = json.load(sys.stdin)
    api_key, secret, token = req["api_key"], req["secret"], req["token"]
    leeway = req.get("leeway", 0)
    out = {
        "wrong_secret": outcome(api_key, secret + "x", token, leeway),
        "wrong_api_key": outcome(api_key + "x", secret, token, leeway),
    }
    try:
        claims = verify(api_key, secret, token, leeway)
    except Exception as e:
        out.update({"ok": False, "error": type(e).__name__})
    else:
        # The signature was just checked: read the times it covers.
        payload = jwt.decode(token, options={"verify_signature": False})
        out.update(
            {
                "ok": True,
                "identity": claims.identity,
                "name": claims.name,
                "video": dataclasses.asdict(claims.video),
                "exp": payload["exp"],
                "nbf": payload["nbf"],
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
