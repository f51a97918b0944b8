"""The decode engine's page allocator (pure CPU): admission never over-commits the pool, budgets are always
honoured, shared prefixes are pinned while used and reclaimed least recently used first."""

import random

import pytest

from light_tts.decode.page_pool import PagePool, PoolExhaustedError


def test_budgets_are_honoured_under_random_arrivals():
    """Random admissions, page-by-page growth, prefix registrations and releases: every admitted stream gets every
    page of its budget, admission refuses what would over-commit, and the invariants hold after every call."""
    rng = random.Random(0)
    pool = PagePool(64)
    live: dict[str, int] = {}  # stream -> pages it still wants (within its budget)
    refused = admitted = 0
    for t in range(4000):
        action = rng.random()
        if action < 0.3:
            sid, budget = f"s{t}", rng.randint(1, 20)
            key = rng.choice([None, "voiceA", "voiceB", "voiceC"])
            if pool.can_admit(budget, key):
                pool.admit(sid, budget, key)
                live[sid] = budget
                admitted += 1
            else:
                with pytest.raises(PoolExhaustedError):
                    pool.admit(sid, budget, key)
                refused += 1
        elif action < 0.75 and live:
            sid = rng.choice(sorted(live))
            if live[sid]:
                pool.allocate(sid, 1)  # never fails: the budget was reserved at admission
                live[sid] -= 1
                stream = pool.streams[sid]
                if stream.prefix is None and stream.num_held >= 2 and rng.random() < 0.3:
                    pool.register_prefix(sid, rng.choice(["voiceA", "voiceB", "voiceC"]), 2)
                if len(stream.own) > 3 and rng.random() < 0.2:
                    pool.drop(sid, rng.randrange(len(stream.own)))
        elif live:
            sid = rng.choice(sorted(live))
            pool.release(sid)
            del live[sid]
        pool.check()
    assert admitted > 100 and refused > 100  # both paths were exercised
    for sid in list(live):
        pool.release(sid)
    pool.check()
    assert pool.num_outstanding == 0 and pool.num_free + pool.num_evictable == pool.num_pages


def test_allocation_beyond_budget_is_refused():
    pool = PagePool(8)
    pool.admit("a", 2)
    pool.allocate("a", 2)
    with pytest.raises(PoolExhaustedError):
        pool.allocate("a", 1)
    with pytest.raises(PoolExhaustedError, match="cannot fit"):
        pool.admit("huge", 9)
    pool.check()


def test_shared_prefix_costs_no_pages_past_its_first_user():
    pool = PagePool(10)
    pool.admit("first", 6)
    pool.allocate("first", 4)
    entry = pool.register_prefix("first", "voice", 3)
    assert entry is not None and pool.streams["first"].page_table[:3] == entry.pages
    used_before = pool.num_used
    pool.admit("second", 3, "voice")  # its own budget: the pages past the prefix
    assert pool.streams["second"].page_table == entry.pages and pool.num_used == used_before
    assert pool.prefix_pages("voice") == 3
    pool.release("first")
    pool.release("second")
    assert pool.num_evictable == 3 and list(pool.unused_prefixes) == ["voice"]  # kept warm while unused
    pool.check()


def test_unused_prefixes_are_evicted_least_recently_used_first():
    pool = PagePool(6)
    for key in ("old", "new"):
        pool.admit(key, 3)
        pool.allocate(key, 3)
        pool.register_prefix(key, key, 3)
        pool.release(key)
    assert pool.num_free == 0 and pool.num_evictable == 6
    pool.admit("s", 3)
    pool.allocate("s", 3)  # reclaims "old", keeps "new"
    assert [e.key for e in pool.take_evicted()] == ["old"] and "new" in pool.prefixes
    # a prefix in use is pinned: admission cannot count its pages
    pool.admit("user", 0, "new")
    assert not pool.can_admit(1)
    pool.check()


def test_lazy_growth_never_over_commits():
    pool = PagePool(6)
    pool.admit("a", 0)
    pool.admit("b", 0)
    assert pool.grow("a", 4) and pool.allocate("a", 4)
    assert not pool.grow("b", 3) and pool.grow("b", 2)  # only 2 left: growth is refused, never over-committed
    pool.allocate("b", 2)
    pool.release("a")
    assert pool.grow("b", 4)
    pool.check()
