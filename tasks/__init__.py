"""Celery tasks: the asynchronous side (order persistence, cache refresh).

Workers never import the web app; they build their own Services from Settings.
"""
