"""WSGI entry point of the web tier: ``web.wsgi:app``, served by ``python -m deploy.web_server``.

* Logging: the server normally configured it already (deploy/web_server.py hands
  granian logsetup's config, gunicorn.conf.py does the same for gunicorn); a server
  started any other way still gets our JSON lines.
* ``gc.freeze()`` once the app is built: everything allocated so far (modules,
  the app, its routes and extensions) moves to a permanent
  generation the collector never scans again, so each full collection is cheaper
  and rarer, which lowers the p99 (measured: BENCHMARKS.md "Web server choice").
"""

import gc
import logging

import logsetup
from settings import Settings
from web import create_app

_settings = Settings.from_env()
if not logging.getLogger().handlers:
    logsetup.configure(_settings.log_format, _settings.log_level)
app = create_app(_settings)
gc.freeze()
