"""Load tests and benchmarks (``python3 manage.py bench``; see loadtest/run.py)."""
