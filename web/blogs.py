"""Routes of /blogs (being built; see the issue that owns this module)."""

from flask import Blueprint

bp = Blueprint("blogs", __name__)
