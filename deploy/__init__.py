"""Deployment: gunicorn config, nginx template, the local cluster, compose assets."""
