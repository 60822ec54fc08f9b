"""The Redis side of hmdp-py: connections, cache policies, locks, ids, limits.

Nothing here imports ``web`` or ``tasks``: a cache refresh or an order
dispatch is passed in as a callable.
"""
