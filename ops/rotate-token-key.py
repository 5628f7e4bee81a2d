#!/usr/bin/env python3
"""Re-encrypt every stored member token with a new REBOOK_TOKEN_KEY (manual key rotation).

rebook stores each member's OAuth pair in Redis under `{REBOOK_KEY_PREFIX}tok:{user_id}`,
Fernet-encrypted with REBOOK_TOKEN_KEY. The app knows one key only: after the key changes, tokens
written with the old key no longer decrypt, and every step of those members fails. There is no
automatic re-encryption in the app (yet); this script is the manual path. Procedure and context:
ops/RUNBOOK.md "Token rotation".

Run it with the app's virtualenv (it needs `redis` and `cryptography`), with the env of the
deployment loaded, while NO worker is running (a worker refreshing a token during the rotation
would write it back with the old key):

    set -a; . /etc/rebook/rebook.env; set +a          # REBOOK_REDIS_URL, REBOOK_TOKEN_KEY (old)
    export REBOOK_TOKEN_KEY_NEW="$(rebook tokens keygen)"
    python ops/rotate-token-key.py --dry-run           # counts only
    python ops/rotate-token-key.py                     # re-encrypts

    python ops/rotate-token-key.py --check             # every token decrypts with REBOOK_TOKEN_KEY?

Safe to run again (tokens already under the new key are re-encrypted with it again); a token
that decrypts with neither key is reported and left as it is (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys

# Outside the app on purpose (no worker.* import): it must run even when the app's settings
# would refuse to load because the key they name no longer matches the stored tokens.


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _fernet(name: str) -> object:
    from cryptography.fernet import Fernet

    value = os.environ.get(name, "").strip()
    if not value:
        sys.exit(f"rotate-token-key: {name} is not set")
    try:
        return Fernet(value.encode())
    except (ValueError, TypeError):
        sys.exit(f"rotate-token-key: {name} is not a Fernet key (make one: rebook tokens keygen)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="count, change nothing")
    mode.add_argument(
        "--check",
        action="store_true",
        help="only check that every token decrypts with REBOOK_TOKEN_KEY",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run even though a token refresh lock is held (a worker may be running)",
    )
    args = parser.parse_args()

    import redis
    from cryptography.fernet import InvalidToken, MultiFernet

    url = os.environ.get("REBOOK_REDIS_URL", "redis://localhost:6379/0")
    prefix = os.environ.get("REBOOK_KEY_PREFIX", "rebook:")
    r = redis.Redis.from_url(url, decode_responses=False)
    try:
        r.ping()
    except redis.RedisError as exc:
        sys.exit(f"rotate-token-key: cannot reach Redis ({type(exc).__name__}: {exc})")

    current = _fernet("REBOOK_TOKEN_KEY")
    token_prefix = f"{prefix}tok:".encode()
    keys = sorted(
        key
        for key in r.scan_iter(match=_escape_glob(f"{prefix}tok:") + "*", count=1000)
        if key.startswith(token_prefix)
    )

    if args.check:
        bad = 0
        for key in keys:
            blob = r.get(key)
            if blob is None:
                continue
            try:
                current.decrypt(blob)  # type: ignore[attr-defined]
            except InvalidToken:
                bad += 1
                print(f"does not decrypt: {key.decode(errors='replace')}")
        print(f"{len(keys)} member token(s); {bad} do not decrypt with REBOOK_TOKEN_KEY")
        return 1 if bad else 0

    new = _fernet("REBOOK_TOKEN_KEY_NEW")
    locks = list(r.scan_iter(match=_escape_glob(f"{prefix}toklock:") + "*", count=1000))
    if locks and not args.force:
        sys.exit(
            f"rotate-token-key: {len(locks)} token refresh lock(s) held: a worker is refreshing "
            "tokens. Stop every worker first (or --force if you are sure none runs)."
        )

    both = MultiFernet([new, current])  # type: ignore[list-item]
    done = unreadable = vanished = 0
    for key in keys:
        name = key.decode(errors="replace")
        for _ in range(5):  # optimistic: retry if the key changes under us
            with r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    blob = pipe.get(key)
                    if blob is None:
                        vanished += 1
                        break
                    try:
                        fresh = both.rotate(blob)
                    except InvalidToken:
                        unreadable += 1
                        print(f"decrypts with neither key, left as is: {name}")
                        break
                    if args.dry_run:
                        done += 1
                        break
                    pipe.multi()
                    pipe.set(key, fresh, keepttl=True)
                    pipe.execute()
                    done += 1
                    break
                except redis.WatchError:
                    continue
        else:
            unreadable += 1
            print(f"kept changing during rotation, not rotated: {name}")

    verb = "would re-encrypt" if args.dry_run else "re-encrypted"
    print(
        f"{len(keys)} member token(s): {verb} {done}, unreadable {unreadable}, "
        f"deleted meanwhile {vanished}"
    )
    if not args.dry_run and done:
        print("now set REBOOK_TOKEN_KEY to the new key everywhere, then start the workers")
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
