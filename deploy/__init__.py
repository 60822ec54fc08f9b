"""Deployment: the web server command (granian; a gunicorn config to compare), nginx
template, Prometheus and Grafana assets, the local cluster."""
