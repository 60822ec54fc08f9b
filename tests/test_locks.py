"""cache/locks.py against a real Redis, with real child processes and real SIGKILLs.

Timing is never asserted as a speed: waits are bounded by generous deadlines
(liveness), and "woke promptly" is checked against the lock's own TTL fallback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import redis
from support.env import ROOT, process_env
from support.lock_child import Child
from support.redis_faults import WritesReset, command_calls, name_connections, reset_stats

from cache.connection import connect, disconnect
from cache.locks import (
    LockNotOwnedError,
    LockTimeout,
    RLock,
    SimpleLock,
    acquire_all,
    owner_id,
    release_all,
)
from cache.scripts import load_script

pytestmark = pytest.mark.redis_cluster  # also on a real Redis Cluster (conftest)


# --- helpers -------------------------------------------------------------------
@pytest.fixture
def redis_client(settings) -> redis.Redis:
    """This test's Redis, without building the web app (cache/ needs no Flask)."""
    client = connect(settings.redis_url)
    yield client
    disconnect(client)


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    """Run ``fn`` in a new thread; the dict gets "result"/"error" and "elapsed"."""
    out: dict = {}

    def target() -> None:
        start = time.monotonic()
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc
        out["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def script_calls(client: redis.Redis) -> int:
    """EVAL + EVALSHA calls since the last CONFIG RESETSTAT."""
    return sum(command_calls(client, cmd) for cmd in ("eval", "evalsha"))


# --- mutual exclusion across processes -------------------------------------------
PROCESSES = 4
# (threads per process, increments per thread): the full acceptance run does
# 5,000 increments (slow on a shared 2-core box: each hand-off wakes a waiter in
# every process); the default suite does 1,000 with the same 4 processes.
FULL = (5, 250)
QUICK = (2, 125)


def _count_with(
    settings, client: redis.Redis, kinds: list[str], children: list[Child], shape: tuple[int, int]
) -> dict[str, int]:
    """Run each kind as a phase in the same PROCESSES children; counter per kind."""
    threads, iterations = shape
    for _ in range(PROCESSES):
        children.append(
            Child(
                settings,
                "count",
                ",".join(kinds),
                str(threads),
                str(iterations),
                "lock:counter",
                "counter",
                "go",
            )
        )
    counts: dict[str, int] = {}
    for kind in kinds:
        for child in children:
            child.expect(f"ready {kind}")
        client.rpush(f"go:{kind}", *["1"] * PROCESSES)
        for child in children:
            child.expect(f"done {kind}", timeout=300)
        counts[kind] = int(client.get(f"counter:{kind}") or 0)
    for child in children:
        assert child.finish() == 0
    return counts


def _total(shape: tuple[int, int]) -> int:
    return PROCESSES * shape[0] * shape[1]


@pytest.mark.process
def test_read_modify_write_is_exact_under_the_locks_and_lossy_without(
    settings, redis_client, children
):
    """4 processes x 2 threads, 1,000 GET-then-SET increments per phase. The
    unlocked control phase must lose updates (so the test can fail)."""
    counts = _count_with(settings, redis_client, ["none", "rlock", "simple"], children, QUICK)
    assert counts["rlock"] == _total(QUICK)
    assert counts["simple"] == _total(QUICK)
    assert counts["none"] < _total(QUICK)
    assert not redis_client.exists("lock:counter")


@pytest.mark.process
@pytest.mark.slow
def test_5000_read_modify_writes_are_exact_under_the_locks(settings, redis_client, children):
    counts = _count_with(settings, redis_client, ["rlock", "simple"], children, FULL)
    assert counts == {"rlock": 5000, "simple": 5000} and _total(FULL) == 5000
    assert not redis_client.exists("lock:counter")


# --- RLock: reentrancy and ownership ----------------------------------------------
def test_reentrant_holds_count_and_release_at_zero(redis_client):
    lock = RLock(redis_client, "lock:order:7")
    assert lock.acquire() and lock.acquire(blocking=False)
    assert lock.hold_count() == 2 and lock.is_held_by_me()
    # the same name through another instance in the same thread is the same hold
    assert RLock(redis_client, "lock:order:7").hold_count() == 2

    lock.release()
    assert lock.hold_count() == 1
    thread, out = run_in_thread(lambda: RLock(redis_client, "lock:order:7").acquire(False))
    thread.join(10)
    assert out["result"] is False  # still held after the first release

    lock.release()
    assert not redis_client.exists("lock:order:7")
    assert lock.hold_count() == 0 and not lock.is_held_by_me()
    with pytest.raises(LockNotOwnedError):
        lock.release()


def test_release_of_a_never_held_lock_raises(redis_client):
    with pytest.raises(LockNotOwnedError):
        RLock(redis_client, "lock:nobody").release()


def test_another_thread_cannot_release_or_share_the_hold(redis_client):
    lock = RLock(redis_client, "lock:order:8")
    assert lock.acquire()
    thread, out = run_in_thread(lock.release)  # same instance, other thread
    thread.join(10)
    assert isinstance(out.get("error"), LockNotOwnedError)
    thread, out = run_in_thread(lambda: (lock.acquire(blocking=False), lock.hold_count()))
    thread.join(10)
    assert out["result"] == (False, 0)
    assert lock.hold_count() == 1
    lock.release()


@pytest.mark.process
def test_another_process_cannot_release(settings, redis_client, children):
    lock = RLock(redis_client, "lock:order:9")
    assert lock.acquire()
    child = Child(settings, "release", "lock:order:9")
    children.append(child)
    child.expect("not-owned")
    assert lock.hold_count() == 1
    lock.release()


@pytest.mark.process
def test_a_forked_child_is_another_owner(redis_client):
    lock = RLock(redis_client, "lock:order:10")
    assert lock.acquire()
    parent_owner = owner_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new process UUID, so it does not hold the lock
        code = 1
        try:
            if owner_id().split(":")[0] != parent_owner.split(":")[0]:
                try:
                    lock.release()
                except LockNotOwnedError:
                    code = 0
            os.write(write_end, b"x")
        finally:
            os._exit(code)
    os.close(write_end)
    os.read(read_end, 1)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.hold_count() == 1
    lock.release()


def test_decorator_acquires_on_each_call(redis_client):
    lock = RLock(redis_client, "lock:decorated")
    seen: list[int] = []

    @lock
    def work(depth: int) -> None:
        seen.append(lock.hold_count())
        if depth:
            work(depth - 1)

    work(2)
    assert seen == [1, 2, 3]
    assert not redis_client.exists("lock:decorated")


def test_context_manager_with_bounded_wait_raises_lock_timeout(redis_client):
    holder = RLock(redis_client, "lock:busy")
    assert holder.acquire(lease=30)
    thread, out = run_in_thread(
        lambda: RLock(redis_client, "lock:busy", wait_timeout=0.2).__enter__()
    )
    thread.join(20)
    assert isinstance(out.get("error"), LockTimeout)
    holder.release()


# --- lease, watchdog, crashes -----------------------------------------------------
def _pttl_samples_until_gone(client: redis.Redis, name: str, limit: float) -> list[int]:
    """PTTL of ``name`` every 20 ms until it is gone (or ``limit`` s passed)."""
    samples: list[int] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ttl = client.pttl(name)
        if ttl == -2:
            return samples
        samples.append(ttl)
        time.sleep(0.02)
    pytest.fail(f"{name} still there after {limit}s: PTTL samples {samples[-5:]}")


@pytest.mark.process
def test_sigkilled_holder_leaves_nothing_renewing(settings, redis_client, children):
    lease_ms = 500
    child = Child(settings, "hold", "lock:order:11", str(lease_ms))
    children.append(child)
    child.expect("held")
    # the child's watchdog keeps it alive past several leases ...
    time.sleep(3 * lease_ms / 1000)
    assert redis_client.exists("lock:order:11")
    assert not RLock(redis_client, "lock:order:11").acquire(blocking=False)

    child.kill()  # SIGKILL: no release, no atexit, no watchdog
    samples = _pttl_samples_until_gone(redis_client, "lock:order:11", limit=lease_ms / 1000 + 10)
    # ... and after the kill nobody renews: the TTL only runs down
    assert all(a >= b for a, b in zip(samples, samples[1:], strict=False)), samples
    assert all(ttl <= lease_ms for ttl in samples)
    lock = RLock(redis_client, "lock:order:11")
    assert lock.acquire(blocking=False)
    lock.release()


FAILED_RELEASE_LEASE_MS = 1000
WAKE_UP_SLACK_S = 2.0  # a waiter's wake-up and three script calls under the full suite's load


@pytest.mark.process
@pytest.mark.redis_cluster(single="WritesReset pauses and kills clients of one server")
@pytest.mark.parametrize("kind", ["rlock", "release_all", "simple"])
def test_a_release_redis_fails_leaves_a_lock_that_expires_with_its_lease(settings, children, kind):
    """Redis drops the releasing connection: the lock is not released, and nobody renews it.

    Before the fix the holder's watchdog kept renewing an RLock whose release
    failed for as long as the process lived. (SimpleLock has no watchdog:
    its case guards the same promise.)
    """
    lease_ms = FAILED_RELEASE_LEASE_MS
    holder = name_connections(connect(settings.redis_url), "lock-holder")
    count = 3 if kind == "release_all" else 1
    names = [f"lock:order:{60 + n}" for n in range(count)]
    if kind == "simple":
        simple = SimpleLock(holder, names[0], ttl_ms=lease_ms)
        assert simple.acquire()
    else:
        locks = [RLock(holder, name, lease_ms=lease_ms) for name in names]
        assert acquire_all(holder, locks) == locks
    child = Child(
        settings, "acquire", "simple" if kind == "simple" else "rlock", ",".join(names), "20"
    )
    children.append(child)
    child.expect("waiting")
    if kind != "simple":
        time.sleep(2 * lease_ms / 1000)  # the watchdog renews past the lease: the child waits
        assert child.lines.empty()
    with (
        WritesReset(settings.redis_url, "lock-holder") as reset,
        pytest.raises(redis.ConnectionError),
    ):
        if kind == "simple":
            simple.release()
        elif kind == "release_all":
            release_all(holder, locks)
        else:
            locks[0].release()
    failed_at = time.time()
    assert reset.killed >= 1
    assert all(holder.exists(name) for name in names)  # not released: it must expire
    line = child.lines.get(timeout=30)
    assert line.startswith("acquired "), line
    # A renewal the watchdog sent before the failed release dropped the hold
    # waits out the pause and lands when it ends: the lease then runs from
    # about failed_at. The rest is the child's wake-up on a loaded 2-core box;
    # a lock that was still renewed would outlive the child's 20 s.
    assert float(line.split()[1]) - failed_at <= lease_ms / 1000 + WAKE_UP_SLACK_S
    holder.connection_pool.disconnect()


def test_watchdog_keeps_the_lock_past_its_lease_and_release_is_immediate(redis_client):
    lease_ms = 500
    lock = RLock(redis_client, "lock:order:12", lease_ms=lease_ms)
    assert lock.acquire()
    deadline = time.monotonic() + 3 * lease_ms / 1000
    checks = 0
    while time.monotonic() < deadline:  # the holder "works" for 3 leases
        assert lock.is_held_by_me()
        checks += 1
        time.sleep(0.05)
    assert checks > 5
    assert 0 < redis_client.pttl("lock:order:12") <= lease_ms
    lock.release()
    assert not redis_client.exists("lock:order:12")


def test_explicit_lease_expires_while_the_holder_still_runs(redis_client):
    lock = RLock(redis_client, "lock:order:13", lease_ms=500)
    assert lock.acquire(lease=0.5)
    samples = _pttl_samples_until_gone(redis_client, "lock:order:13", limit=10)
    assert all(a >= b for a, b in zip(samples, samples[1:], strict=False)), samples
    assert not lock.is_held_by_me()
    with pytest.raises(LockNotOwnedError):
        lock.release()


def test_reentry_with_watchdog_renews_while_any_hold_wants_it(redis_client):
    lock = RLock(redis_client, "lock:order:14", lease_ms=500)
    assert lock.acquire(lease=0.5)  # outer: explicit lease
    assert lock.acquire()  # inner: watchdog
    time.sleep(1.5)
    assert lock.hold_count() == 2
    lock.release()
    lock.release()
    assert not redis_client.exists("lock:order:14")


# --- waiting: pub/sub wake-up, no spinning ------------------------------------------
def test_waiter_wakes_on_unlock_not_on_ttl_and_does_not_spin(redis_client):
    lease_s = 30
    holder = RLock(redis_client, "lock:order:15", lease_ms=lease_s * 1000)
    assert holder.acquire(lease=lease_s)
    reset_stats(redis_client)
    waiter = RLock(redis_client, "lock:order:15")
    thread, out = run_in_thread(lambda: (waiter.acquire(), waiter.release()))
    time.sleep(0.5)
    assert thread.is_alive()  # blocked, not failed
    holder.release()
    thread.join(lease_s - 5)
    assert "error" not in out, out.get("error")
    # woke on the unlock message: far sooner than the 30 s TTL fallback
    assert out["elapsed"] < lease_s / 2
    # 1 holder release + the waiter's tries and release: a handful, not a spin
    calls = script_calls(redis_client)
    assert calls <= 8, calls


def test_force_release_deletes_and_wakes_waiters(redis_client):
    holder = RLock(redis_client, "lock:order:16", lease_ms=30_000)
    assert holder.acquire(lease=30)
    got = threading.Event()

    def wait_then_hold() -> str:
        lock = RLock(redis_client, "lock:order:16")
        lock.acquire()
        got.set()
        return owner_id()

    thread, out = run_in_thread(wait_then_hold)
    time.sleep(0.3)
    assert not got.is_set()
    assert RLock(redis_client, "lock:order:16").force_release() is True
    thread.join(15)
    assert got.is_set() and out["elapsed"] < 15
    assert redis_client.hexists("lock:order:16", out["result"])
    with pytest.raises(LockNotOwnedError):
        holder.release()  # the old holder lost it
    assert RLock(redis_client, "lock:order:16").force_release() is True
    assert RLock(redis_client, "lock:order:16").force_release() is False


def test_bounded_wait_returns_false(redis_client):
    holder = RLock(redis_client, "lock:order:17")
    assert holder.acquire()
    thread, out = run_in_thread(
        lambda: RLock(redis_client, "lock:order:17").acquire(wait_timeout=0.3)
    )
    thread.join(20)
    assert out["result"] is False
    assert 0.3 <= out["elapsed"] < 20  # returned on its own timeout, not the 30 s lease
    holder.release()


def test_acquire_all_takes_the_free_locks_in_one_go_and_skips_held_ones(redis_client):
    names = [f"lock:order:{n}" for n in (30, 31, 32)]
    other = RLock(redis_client, names[1])
    thread, out = run_in_thread(lambda: other.acquire(blocking=False))
    thread.join(10)
    assert out["result"] is True  # held by another thread: an owner that is not us
    locks = [RLock(redis_client, name, lease_ms=3000) for name in names]
    taken = acquire_all(redis_client, locks)
    assert taken == [locks[0], locks[2]]
    assert [lock.hold_count() for lock in locks] == [1, 0, 1]
    time.sleep(3.5)  # past the lease: the watchdog renewed the batch's holds
    assert locks[0].is_held_by_me() and locks[2].is_held_by_me()
    assert release_all(redis_client, taken) == []
    assert not redis_client.exists(names[0]) and not redis_client.exists(names[2])
    assert redis_client.exists(names[1])  # the other owner's hold untouched
    assert RLock(redis_client, names[1]).force_release()


def test_release_all_reports_lost_locks_and_releases_the_rest(redis_client):
    locks = [RLock(redis_client, f"lock:order:{n}") for n in (33, 34)]
    assert acquire_all(redis_client, locks) == locks
    assert locks[0].acquire()  # reentrant on top of the batch's hold
    assert RLock(redis_client, "lock:order:34").force_release()
    assert release_all(redis_client, locks) == [locks[1]]
    assert locks[0].hold_count() == 1  # one hold left: the reentrant one
    locks[0].release()
    assert not redis_client.exists("lock:order:33")


def test_acquire_all_and_release_all_reload_scripts_a_restarted_redis_forgot(redis_client):
    locks = [RLock(redis_client, f"lock:order:{n}", lease_ms=5000) for n in (35, 36, 37)]
    redis_client.script_flush()  # as after a restart: the server knows no script
    assert acquire_all(redis_client, locks) == locks
    assert all(0 < redis_client.pttl(lock.name) <= 5000 for lock in locks)
    redis_client.script_flush()
    assert release_all(redis_client, locks) == []
    assert not any(redis_client.exists(lock.name) for lock in locks)


# --- SimpleLock ----------------------------------------------------------------
def test_simple_lock_basic_ownership(redis_client):
    lock = SimpleLock(redis_client, "lock:shop:42", ttl_ms=5_000)
    other = SimpleLock(redis_client, "lock:shop:42", ttl_ms=5_000)
    assert lock.acquire()
    assert lock.locked() and lock.owned() and not other.owned()
    assert not other.acquire()
    with pytest.raises(LockNotOwnedError):
        other.release()
    with pytest.raises(LockNotOwnedError):
        other.extend(1_000)
    assert lock.owned()
    lock.release()
    assert not lock.locked()
    with pytest.raises(LockNotOwnedError):
        lock.release()
    assert other.acquire()
    other.release()


def test_simple_lock_extend_keeps_it_alive(redis_client):
    lock = SimpleLock(redis_client, "lock:shop:43", ttl_ms=400)
    assert lock.acquire()
    lock.extend(2_000)
    assert redis_client.pttl("lock:shop:43") > 400
    time.sleep(0.6)  # past the original TTL
    assert lock.owned()
    lock.release()


def test_simple_lock_expires_without_extend(redis_client):
    lock = SimpleLock(redis_client, "lock:shop:44", ttl_ms=200)
    assert lock.acquire()
    _pttl_samples_until_gone(redis_client, "lock:shop:44", limit=10)
    with pytest.raises(LockNotOwnedError):
        lock.release()


def test_simple_lock_bounded_blocking_acquire_returns_false(redis_client):
    holder = SimpleLock(redis_client, "lock:shop:45", ttl_ms=30_000)
    assert holder.acquire()
    waiter = SimpleLock(redis_client, "lock:shop:45")
    start = time.monotonic()
    assert waiter.acquire(blocking=True, timeout=0.3) is False
    assert 0.3 <= time.monotonic() - start < 20
    with pytest.raises(LockTimeout), SimpleLock(redis_client, "lock:shop:45", timeout=0.2):
        pass
    holder.release()


def test_simple_lock_blocking_waiter_wakes_on_release(redis_client):
    holder = SimpleLock(redis_client, "lock:shop:46", ttl_ms=30_000)
    assert holder.acquire()
    reset_stats(redis_client)
    waiter = SimpleLock(redis_client, "lock:shop:46")
    thread, out = run_in_thread(lambda: waiter.acquire(blocking=True))
    time.sleep(0.5)
    assert thread.is_alive()
    holder.release()
    thread.join(25)
    assert out["result"] is True and out["elapsed"] < 15
    assert 1 <= command_calls(redis_client, "set") <= 5
    waiter.release()


def test_waiters_of_one_process_are_woken_in_turn(redis_client):
    """Wake-one per process: each release hands on, nobody sleeps until the TTL."""
    lease_s = 30
    holder = RLock(redis_client, "lock:order:18")
    assert holder.acquire(lease=lease_s)
    quitter = RLock(redis_client, "lock:order:18")
    q_thread, q_out = run_in_thread(lambda: quitter.acquire(wait_timeout=0.3))

    def take_and_release() -> int:
        lock = RLock(redis_client, "lock:order:18")
        assert lock.acquire()
        time.sleep(0.05)
        lock.release()
        return 1

    runs = [run_in_thread(take_and_release) for _ in range(3)]
    q_thread.join(20)
    assert q_out["result"] is False  # gave up; must not take the others' wake-ups away
    time.sleep(0.2)
    holder.release()
    for thread, _ in runs:
        thread.join(lease_s - 5)
    assert [out.get("result") for _, out in runs] == [1, 1, 1], runs
    # one release woke the next each time: nobody waited for the 30 s TTL fallback
    assert all(out["elapsed"] < lease_s / 2 for _, out in runs)
    assert not redis_client.exists("lock:order:18")


def test_short_explicit_lease_inside_a_watchdog_hold_does_not_lose_it(redis_client):
    lock = RLock(redis_client, "lock:order:19", lease_ms=600)
    assert lock.acquire()  # watchdog
    assert lock.acquire(lease=0.05)  # cuts the TTL to 50 ms ...
    time.sleep(0.5)
    assert lock.hold_count() == 2  # ... but the watchdog renewed at once
    lock.release()
    lock.release()
    assert not redis_client.exists("lock:order:19")


def test_watchdog_stops_for_a_thread_that_died_holding_the_lock(redis_client):
    thread, out = run_in_thread(
        lambda: RLock(redis_client, "lock:order:20", lease_ms=500).acquire()
    )
    thread.join(10)
    assert out["result"] is True and redis_client.exists("lock:order:20")
    samples = _pttl_samples_until_gone(redis_client, "lock:order:20", limit=10)
    assert samples, "the lock vanished at once"
    lock = RLock(redis_client, "lock:order:20")
    assert lock.acquire(blocking=False)
    lock.release()


def test_contention_and_wait_are_recorded(redis_client):
    from prometheus_client import REGISTRY

    def contention() -> float:
        return REGISTRY.get_sample_value("hmdp_lock_contention_total", {"kind": "rlock"}) or 0.0

    def waits() -> float:
        return REGISTRY.get_sample_value("hmdp_lock_wait_seconds_count", {"kind": "rlock"}) or 0.0

    before_c, before_w = contention(), waits()
    holder = RLock(redis_client, "lock:order:21")
    assert holder.acquire()
    thread, out = run_in_thread(lambda: RLock(redis_client, "lock:order:21").acquire(False))
    thread.join(10)
    assert out["result"] is False
    holder.release()
    assert contention() == before_c + 1
    assert waits() == before_w + 2


@pytest.mark.process
@pytest.mark.redis_cluster(single="the benchmark script's output, not the locks")
def test_benchmark_script_runs_tiny(settings, redis_client):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "loadtest" / "bench_locks.py"),
            "--redis-url",
            settings.redis_url,
            "--iterations",
            "5",
            "--processes",
            "1",
            "--threads",
            "2",
        ],
        env=process_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "command: " in result.stdout
    assert "rlock   contended 1p x 2t" in result.stdout
    assert "simple  uncontended x1" in result.stdout


@pytest.mark.redis_cluster(single="kills the listener and releases in one MULTI on one server")
def test_waiter_recovers_a_message_lost_while_its_listener_reconnects(redis_client):
    """Kill the subscriber connection and release in one MULTI: the PUBLISH reaches
    nobody. The waiter must still get the lock long before the 30 s TTL fallback,
    because the listener re-subscribes and then makes a waiter retry."""
    lease_s = 30
    holder = RLock(redis_client, "lock:order:22")
    assert holder.acquire(lease=lease_s)
    thread, out = run_in_thread(lambda: RLock(redis_client, "lock:order:22").acquire())
    time.sleep(0.3)
    assert thread.is_alive()
    owner = owner_id()
    release = load_script(redis_client, "rlock_release")
    redis_client.script_load(release.script)
    pipe = redis_client.pipeline(transaction=True)
    pipe.client_kill_filter(_type="pubsub")
    pipe.evalsha(
        release.sha,
        1,
        "lock:order:22",
        owner,
        "hmdp_lock__channel:lock:order:22",
    )
    killed, released = pipe.execute()
    assert killed >= 1 and released == 0
    thread.join(lease_s - 5)
    assert out.get("result") is True
    assert out["elapsed"] < lease_s / 2
