"""Routes of /follows (being built; see the issue that owns this module)."""

from flask import Blueprint

bp = Blueprint("follows", __name__)
