"""Flower's configuration file (``celery -A tasks.worker flower --conf=deploy/flowerconfig.py``).

Tornado executes this file and keeps the names that are Flower/tornado options.
It exists so that Flower logs JSON lines like every other process: it installs
logsetup's handler and turns tornado's own log set-up off (``logging = "none"``).
"""

import logsetup
from settings import Settings

_settings = Settings.from_env()
logsetup.configure(_settings.log_format, _settings.log_level)

logging = "none"  # tornado option: do not install tornado's pretty handler
