"""Celery beat jobs: close the loops (cache refresh and warm-up, Bloom rebuild,
pending-order recovery). Schedule in ``celeryconfig.beat_schedule``."""
