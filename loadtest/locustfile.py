"""locust users for the hmdp load tests (run by ``loadtest/run.py``; see its doc).

The runner writes a plan (JSON) and starts ``locust -f loadtest/locustfile.py
--hmdp-plan PLAN USERCLASS``. Users are FastHttpUser (geventhttpclient): the
cheapest locust client, which matters on a 2-core machine.

* ``CacheUser``: GET /shop/{id}; ``hot_share`` (80%) of the ids from the hot
  set, the rest uniform over 1..cold_span, a little above the shop count, so a
  few % of those ids do not exist (404 is then the expected answer).
* ``SeckillUser``: each locust user is a distinct logged-in hmdp user (its own
  session token) and makes ``loops`` POST /voucher-order/seckill/{id} calls;
  user i's call j goes to voucher (i*loops + j) mod V, so the pairs are spread
  evenly over the vouchers. 200 (ordered) and 409 (sold out / already ordered)
  are both correct answers; anything else is a failure.
* ``MixedUser``: a logged-in user browsing (shops as above, shop types, a
  shop's vouchers, its own profile) and now and then buying.
* ``EmptyUser``: GET /bench/empty, the same-run baseline of the Flask stack.

Users are paced (``pace`` seconds per call, so users/pace is the offered
load) or closed-loop (pace 0). With ``loops`` set, locust quits once every
user has made its calls. Latencies are recorded here with full precision
(locust's own CSV rounds to whole ms) and written, with the seckill outcomes,
to the plan's ``out`` file when locust quits.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser

PLAN: dict[str, Any] = {}
_next_user = itertools.count()
_state: dict[str, Any] = {}


def _reset() -> None:
    """Forget latencies (after the ramp-up); seckill outcomes always count, for the verdict."""
    _state.update(latencies=defaultdict(list), failures=Counter(), first=None, last=None)


_reset()
_state.update(
    outcomes=Counter(), order_ids=Counter(), bought=Counter(), done_users=0, cpu_warning=False
)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--hmdp-plan", default="", help="the runner's plan (JSON file)")


@events.init.add_listener
def _load_plan(environment: Any, **_: Any) -> None:
    path = (
        getattr(environment.parsed_options, "hmdp_plan", "") if environment.parsed_options else ""
    )
    if not path:
        return
    PLAN.update(json.loads(Path(path).read_text()))
    PLAN["reset_stats"] = bool(environment.reset_stats)
    if PLAN.get("tokens_file"):
        PLAN["tokens"] = Path(PLAN["tokens_file"]).read_text().split()


@events.request.add_listener
def _record(
    name: str,
    response_time: float,
    exception: BaseException | None,
    start_time: float | None = None,
    **_: Any,
) -> None:
    _state["latencies"][name].append(response_time)
    if exception is not None:
        _state["failures"][name] += 1
    end = time.time()
    if _state["first"] is None:
        _state["first"] = start_time or end
    _state["last"] = end


@events.spawning_complete.add_listener
def _on_spawned(**_: Any) -> None:
    if PLAN.get("reset_stats"):
        _reset()  # --reset-stats: the steady state only, as locust's own stats do


@events.cpu_warning.add_listener
def _on_cpu_warning(**_: Any) -> None:
    _state["cpu_warning"] = True


def _percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def _summary(values: list[float], failures: int) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "requests": len(ordered),
        "failures": failures,
        "p50": _percentile(ordered, 0.50),
        "p95": _percentile(ordered, 0.95),
        "p99": _percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else 0.0,
    }


@events.quitting.add_listener
def _write_out(**_: Any) -> None:
    if not PLAN.get("out"):
        return
    everything = [x for values in _state["latencies"].values() for x in values]
    total = _summary(everything, sum(_state["failures"].values()))
    seconds = (_state["last"] - _state["first"]) if _state["first"] else 0.0
    result = {
        **total,
        "seconds": seconds,
        "rps": total["requests"] / seconds if seconds > 0 else 0.0,
        "by_name": {
            name: _summary(values, _state["failures"][name])
            for name, values in sorted(_state["latencies"].items())
        },
        "outcomes": dict(_state["outcomes"]),
        "duplicate_order_ids": sum(n - 1 for n in _state["order_ids"].values() if n > 1),
        "duplicate_purchases": sum(n - 1 for n in _state["bought"].values() if n > 1),
        "users_done": _state["done_users"],
        "cpu_warning": _state["cpu_warning"],
    }
    Path(PLAN["out"]).write_text(json.dumps(result, indent=1))


class _PlannedUser(FastHttpUser):
    """Pacing and loop counting shared by every user class."""

    abstract = True
    connection_timeout = 30.0
    network_timeout = 60.0

    def on_start(self) -> None:
        self.index = next(_next_user)
        self.calls = 0
        pace = PLAN.get("pace", 0)
        self._next = time.monotonic()
        if pace:
            gevent.sleep(random.random() * pace)  # spread the users' first calls
            self._next = time.monotonic()

    def wait_time(self) -> float:
        """Start one call every ``pace`` seconds (never catching up after a stall)."""
        pace = PLAN.get("pace", 0)
        if not pace:
            return 0
        now = time.monotonic()
        self._next = max(self._next + pace, now)
        return self._next - now

    def counted(self) -> None:
        """After each call: stop this user after ``loops`` calls; quit when all have."""
        self.calls += 1
        loops = PLAN.get("loops", 0)
        if loops and self.calls >= loops:
            _state["done_users"] += 1
            if _state["done_users"] >= PLAN["users"]:
                gevent.spawn(self.environment.runner.quit)
            raise StopUser()

    # --- requests ---------------------------------------------------------------------------

    def shop_id(self) -> tuple[int, bool]:
        """An id from the hot/cold mix, and whether it exists."""
        if random.random() < PLAN["hot_share"]:
            return random.choice(PLAN["hot_ids"]), True
        shop_id = random.randint(1, PLAN["cold_span"])
        return shop_id, shop_id <= PLAN["shop_count"]

    def get_shop(self) -> None:
        shop_id, exists = self.shop_id()
        name = "/shop/[id]" if exists else "/shop/[missing]"
        with self.client.get(f"/shop/{shop_id}", name=name, catch_response=True) as resp:
            if resp.status_code == (200 if exists else 404):
                resp.success()  # catch_response: a 4xx is a failure unless we say so
            else:
                resp.failure(f"status {resp.status_code}")

    def seckill(self, voucher_id: int) -> None:
        headers = {"authorization": PLAN["tokens"][self.index]}
        with self.client.post(
            f"/voucher-order/seckill/{voucher_id}",
            name="/voucher-order/seckill/[id]",
            headers=headers,
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                order_id = resp.json()["data"]
                _state["outcomes"]["ok"] += 1
                _state["order_ids"][order_id] += 1
                _state["bought"][(self.index, voucher_id)] += 1
            elif resp.status_code == 409:  # sold out / already ordered: a correct answer
                message = (resp.json() or {}).get("errorMsg") or "refused"
                _state["outcomes"][message] += 1
                resp.success()
            else:
                _state["outcomes"][f"status {resp.status_code}"] += 1
                resp.failure(f"status {resp.status_code}")


class CacheUser(_PlannedUser):
    @task
    def shop(self) -> None:
        self.get_shop()
        self.counted()


class SeckillUser(_PlannedUser):
    @task
    def buy(self) -> None:
        vouchers = PLAN["vouchers"]
        self.seckill(vouchers[(self.index * PLAN["loops"] + self.calls) % len(vouchers)])
        self.counted()


class MixedUser(_PlannedUser):
    """Browsing with a session, buying now and then (weights roughly a shop app's)."""

    def _auth(self) -> dict[str, str]:
        return {"authorization": PLAN["tokens"][self.index]}

    @task(60)
    def shop(self) -> None:
        self.get_shop()
        self.counted()

    @task(10)
    def shop_types(self) -> None:
        self.client.get("/shop-type/list")
        self.counted()

    @task(10)
    def vouchers_of_shop(self) -> None:
        shop_id = random.choice(PLAN["hot_ids"])
        self.client.get(f"/voucher/list/{shop_id}", name="/voucher/list/[shopId]")
        self.counted()

    @task(10)
    def me(self) -> None:
        self.client.get("/user/me", headers=self._auth())
        self.counted()

    @task(10)
    def buy(self) -> None:
        self.seckill(random.choice(PLAN["vouchers"]))
        self.counted()


class EmptyUser(_PlannedUser):
    @task
    def empty(self) -> None:
        self.client.get("/bench/empty")
        self.counted()
