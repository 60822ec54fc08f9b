"""Routes of /orders (being built; see the issue that owns this module)."""

from flask import Blueprint

bp = Blueprint("orders", __name__)
