"""Routes of /users (being built; see the issue that owns this module)."""

from flask import Blueprint

bp = Blueprint("users", __name__)
