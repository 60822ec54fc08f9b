"""Helpers the tests share: real servers, real processes, demo rows (never fakes).

* :mod:`support.backends` -- which backends run, and their own Redis and database;
* :mod:`support.env` -- the environment of a child process reading given Settings;
* :mod:`support.procs` -- web servers and workers as processes, HTTP and log helpers;
* :mod:`support.workers` -- Celery order workers that tests SIGKILL;
* :mod:`support.seckill`, :mod:`support.social` -- rows for the seckill and social tests;
* :mod:`support.tcp_proxy` -- a TCP proxy that can cut a connection mid-stream;
* :mod:`support.redis_faults` -- one client's Redis writes failing as on a connection reset;
* :mod:`support.lock_child` -- a ``lock_worker.py`` child whose output a test waits for;
* ``lock_worker.py``, ``ratelimit_worker.py`` -- scripts run as child processes.
"""
