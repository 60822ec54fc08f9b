"""Routes of /shops (being built; see the issue that owns this module)."""

from flask import Blueprint

bp = Blueprint("shops", __name__)
