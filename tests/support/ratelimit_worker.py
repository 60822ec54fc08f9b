"""A child process for the rate-limit concurrency test (run with sys.executable).

    python tests/ratelimit_worker.py URL STRATEGY KEY REQUESTS READY GO

STRATEGY is token_bucket (capacity 100, ~0 refill) or sliding_window (100 per
hour). Pushes one token on the Redis list READY, waits for one on GO (so all
workers start together), fires REQUESTS hits at KEY using Redis TIME (no
caller clock), and prints the number admitted.
"""

from __future__ import annotations

import sys

from cache.connection import connect
from cache.ratelimit import SlidingWindow, TokenBucket, limiter_for

RULES = {
    "token_bucket": TokenBucket(capacity=100, rate=1e-6),
    "sliding_window": SlidingWindow(limit=100, window=3600.0),
}


def main(url: str, strategy: str, key: str, requests: int, ready: str, go: str) -> None:
    client = connect(url)
    rule = RULES[strategy]
    limiter = limiter_for(client, rule)
    client.rpush(ready, "1")
    # Short blocking pops: redis-py's default socket timeout (5 s) is shorter than
    # the time the slowest sibling may need to start on a busy machine.
    for _ in range(60):
        if client.blpop([go], timeout=1) is not None:
            break
    else:
        raise SystemExit("never got the go signal")
    admitted = sum(limiter.hit(key, rule).allowed for _ in range(requests))
    print(admitted, flush=True)


if __name__ == "__main__":
    url, strategy, key, requests, ready, go = sys.argv[1:7]
    main(url, strategy, key, int(requests), ready, go)
