"""WSGI app for loadtest/bench_shop.py: the real app plus ONE baseline route.

``GET /bench/empty`` returns a constant envelope through the same Flask stack
(before-request hooks, error handlers, JSON response), so that "shop lookup vs.
empty route" isolates the cost of the cache. It exists only in this module,
never in web.wsgi (production).
"""

from flask import Response

from web import create_app

EMPTY = '{"success":true,"errorMsg":null,"data":null,"total":null}'

app = create_app()


def bench_empty() -> Response:
    """The baseline: Flask's own cost for a tiny JSON answer."""
    return Response(EMPTY, mimetype="application/json")


app.add_url_rule("/bench/empty", "bench_empty", bench_empty)
