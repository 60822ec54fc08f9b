"""The named load-test scenarios: the seed's test matrix plus two wrk peak runs.

Offered load (``rate``, requests/s over all users) follows the seed's reported
throughput: its cache users were paced (50 users gave 1,002 QPS), and its
seckill runs were ~1,000 TPS at 500, 1,000 and 2,000 users. ``rate`` 0 means
closed loop (every user sends its next request as soon as it has an answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .stack import DataPlan

CACHE_DATA = DataPlan(users=200, shops=50_000, hot=100)  # the seed's 50,000 shops
SECKILL_DATA = DataPlan(users=2_000, shops=500)  # 10 seckill vouchers x 300 stock


@dataclass(frozen=True)
class Scenario:
    """One named run: which generator, how many users, how long, on what data."""

    name: str
    kind: str  # cache | seckill | mixed | shop-peak | seckill-peak
    generator: str  # locust | wrk
    users: int  # locust users, or wrk connections
    duration: float = 0.0  # seconds of steady load (0: until every user made `loops` calls)
    loops: int = 0
    rate: float = 0.0  # offered requests/s in total; 0 = closed loop
    data: DataPlan = field(default_factory=DataPlan)
    seed: str = ""  # the seed's figure for this run, for the report
    note: str = ""

    @property
    def needs_orders(self) -> bool:
        """Sells seckill vouchers: needs sessions, a Celery worker and the verifier."""
        return self.kind in {"seckill", "mixed", "seckill-peak"}

    @property
    def locust_class(self) -> str:
        return {"cache": "CacheUser", "seckill": "SeckillUser", "mixed": "MixedUser"}[self.kind]

    def scaled(self, **changes: object) -> Scenario:
        """This scenario with command-line overrides (users, duration, loops, rate...)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        scenario = replace(self, **changes)  # type: ignore[arg-type]
        if scenario.needs_orders and scenario.kind != "seckill-peak":
            # Every locust user is a distinct hmdp user: enough demo users for all.
            data = scenario.data
            if data.users < scenario.users:
                scenario = replace(scenario, data=replace(data, users=scenario.users))
        return scenario


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "cache-baseline",
            "cache",
            "locust",
            50,
            duration=30,
            rate=1_000,
            data=CACHE_DATA,
            seed="1,002 QPS, p99 1 ms",
        ),
        Scenario(
            "cache-medium",
            "cache",
            "locust",
            500,
            duration=30,
            rate=5_000,
            data=CACHE_DATA,
            seed="4,986 QPS",
        ),
        Scenario(
            "cache-high",
            "cache",
            "locust",
            1_000,
            duration=30,
            rate=10_000,
            data=CACHE_DATA,
            seed="9,955 QPS, p99 3 ms",
        ),
        Scenario(
            "cache-stress",
            "cache",
            "locust",
            2_000,
            duration=30,
            rate=20_000,
            data=CACHE_DATA,
            seed="12,012 QPS, p99 516 ms",
        ),
        Scenario(
            "seckill-500",
            "seckill",
            "locust",
            500,
            loops=20,
            rate=1_000,
            data=SECKILL_DATA,
            seed="~1,000 TPS, p99 4 ms",
        ),
        Scenario(
            "seckill-1k",
            "seckill",
            "locust",
            1_000,
            loops=10,
            rate=1_000,
            data=SECKILL_DATA,
            seed="~1,000 TPS, p99 4 ms",
        ),
        Scenario(
            "seckill-2k",
            "seckill",
            "locust",
            2_000,
            loops=5,
            rate=1_000,
            data=SECKILL_DATA,
            seed="~1,000 TPS, p99 4 ms",
        ),
        Scenario(
            "seckill-30k",
            "seckill",
            "locust",
            1_000,
            loops=30,
            rate=0,
            # 100 seckill vouchers x 300 = 30,000 stock; (i*30 + j) mod 100 gives every
            # voucher exactly 300 distinct buyers: every request can and must succeed.
            data=DataPlan(users=1_000, shops=500, vouchers=110, seckill_vouchers=100),
            seed="30,000 requests -> 29,957 orders",
            note="closed loop; successes = rows = stock deducted, exactly",
        ),
        Scenario(
            "mixed",
            "mixed",
            "locust",
            1_000,
            duration=30,
            rate=2_000,
            data=DataPlan(users=1_000, shops=50_000, hot=100),
            note="60% shop, 10% types, 10% vouchers of a shop, 10% /user/me, 10% seckill",
        ),
        Scenario(
            "shop-peak",
            "shop-peak",
            "wrk",
            64,
            duration=30,
            data=CACHE_DATA,
            note="GET /shop/{id} over the hot set vs the empty route",
        ),
        Scenario(
            "seckill-peak",
            "seckill-peak",
            "wrk",
            64,
            duration=20,
            # 20,000 users x 10 vouchers = 200,000 (user, voucher) pairs, stock 20,000 each:
            # nothing sells out or repeats before 200,000 requests (10,000 req/s for 20 s).
            data=DataPlan(
                users=20_000, shops=500, vouchers=15, seckill_vouchers=10, seckill_stock=20_000
            ),
            note="gate incl. dispatch; each request a different user's token",
        ),
    ]
}
