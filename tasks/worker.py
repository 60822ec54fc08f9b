"""Entry point for the Celery CLI: ``celery -A tasks.worker worker|beat``.

Only the CLI imports this module; tests and the web app call
:func:`tasks.app.create_celery` with their own Settings.
"""

from tasks.app import create_celery

app = create_celery()
