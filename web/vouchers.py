"""Routes of /vouchers (being built; see the issue that owns this module)."""

from flask import Blueprint

bp = Blueprint("vouchers", __name__)
