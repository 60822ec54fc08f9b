"""WSGI app for the benchmarks: the production app (web.wsgi) plus ONE baseline route.

``GET /bench/empty`` returns a constant envelope through the same Flask stack
(before-request hooks, error handlers, JSON response), so that "shop lookup vs.
empty route" isolates the cost of the cache. It exists only in this module,
never in web.wsgi (production); everything else (logging, ``gc.freeze()``) is
web.wsgi's own, so the benchmark serves what is deployed.
"""

from flask import Response

from web.envelope import envelope, json_response
from web.wsgi import app

EMPTY = envelope()


def bench_empty() -> Response:
    """The baseline: Flask's own cost for a tiny JSON answer."""
    return json_response(EMPTY)


app.add_url_rule("/bench/empty", "bench_empty", bench_empty)
