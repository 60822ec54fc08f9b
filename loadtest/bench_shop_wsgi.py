"""WSGI app for loadtest/bench_shop.py: the real app plus ONE baseline route.

``GET /bench/empty`` returns a constant envelope through the same Flask stack
(before-request hooks, error handlers, JSON response), so that "shop lookup vs.
empty route" isolates the cost of the cache. It exists only in this module,
never in web.wsgi (production).
"""

import gc
import logging

from flask import Response

import logsetup
from settings import Settings
from web import create_app

EMPTY = '{"success":true,"errorMsg":null,"data":null,"total":null}'

_settings = Settings.from_env()
if not logging.getLogger().handlers:
    # gunicorn configured logging already (deploy/gunicorn.conf.py); another server
    # (granian, compared in BENCHMARKS.md) gets the same JSON logs, so the same cost.
    logsetup.configure(_settings.log_format, _settings.log_level)
app = create_app(_settings)


def bench_empty() -> Response:
    """The baseline: Flask's own cost for a tiny JSON answer."""
    return Response(EMPTY, mimetype="application/json")


app.add_url_rule("/bench/empty", "bench_empty", bench_empty)

# As web/wsgi.py: the start-up objects leave the collector's generations, so a full
# collection walks only what requests allocate (fewer, shorter pauses: lower p99).
gc.freeze()
