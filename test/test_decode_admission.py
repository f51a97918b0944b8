"""The decode engine's admission policy (pure CPU, a real PagePool, a simulated clock): playing streams come back
ahead of everything not started, preemption only when a playing stream would stall and only from younger streams,
at most once per interval and never to no avail, non-stream utterances wait only behind playing streams, and new
streams keep the headroom free."""

import subprocess
import sys

from light_tts.decode.admission import AdmissionConfig, Ask, Holder, Kind, Planner
from light_tts.decode.page_pool import PagePool

LAZY = AdmissionConfig(reservation="lazy", headroom_pages=2, preempt_interval_s=5.0)


def playing(key, started, pages, admitted=True, urgent=False, chosen=True):
    return Ask(key, Kind.PLAYING, (started, 0), pages, admitted, chosen, urgent)


def new(key, arrival, pages, chosen=True):
    return Ask(key, Kind.NEW, (arrival, 0), pages, False, chosen)


def whole(key, arrival, pages, chosen=True):
    return Ask(key, Kind.WHOLE, (arrival, 0), pages, False, chosen)


def hold(pool, key, pages, started, preempted_at=None, spare_s=10.0) -> Holder:
    pool.admit(key, pages)
    pool.allocate(key, pages)
    return Holder(key, (started, 0), preempted_at, spare_s)


def plan(pool, asks, holders, now=0.0, cfg=LAZY, slots=100, room=100):
    return Planner(pool, cfg).plan(asks, holders, now, slots, room)


def test_new_streams_leave_the_headroom_and_the_next_chunk_of_every_admitted_stream():
    pool = PagePool(12)
    holders = [hold(pool, "a", 4, started=1.0), hold(pool, "b", 3, started=2.0)]  # 5 free
    # 1 page + 2 admitted streams' next chunks + 2 pages of headroom = 5: fits; a second one does not
    p = plan(pool, [new("n1", 5.0, 1), new("n2", 6.0, 1)], holders)
    assert p.run == ["n1"] and p.waiting == {"n2": "pages"}
    pool.check()


def test_a_preempted_stream_comes_back_ahead_of_everything_not_started():
    pool = PagePool(12)
    holders = [hold(pool, "a", 6, started=1.0)]  # 6 free
    comeback = playing("back", started=2.0, pages=8, admitted=False)  # its whole context: not there yet
    p = plan(pool, [new("n", 0.5, 1), whole("w", 0.1, 2), comeback], holders)
    assert p.run == [] and p.waiting == {"back": "pages", "w": "pages", "n": "pages"}
    # while it is not even in this step (not due yet), its pages are still kept from the others
    comeback.is_chosen = False
    p = plan(pool, [new("n", 0.5, 1), whole("w", 0.1, 2), comeback], holders)
    assert p.run == [] and p.waiting["back"] == "turn"
    # once the older stream finished, it comes back first, and only then do the others fit behind it
    pool.release("a")
    comeback.is_chosen = True
    p = plan(pool, [new("n", 0.5, 1), whole("w", 0.1, 2), comeback], [])
    assert p.run == ["back", "w"] and p.waiting == {"n": "pages"}  # n: 1 + 1 admitted + 2 headroom > 2 left
    pool.check()


def test_preemption_only_when_the_alternative_is_a_stall():
    pool = PagePool(10)
    holders = [hold(pool, "old", 4, started=1.0), hold(pool, "mid", 3, started=2.0), hold(pool, "young", 3, 3.0)]
    grow = playing("old", started=1.0, pages=2)
    within = playing("mid", started=2.0, pages=0)  # its chunk ends in a page it holds
    p = plan(pool, [grow, within], holders)
    assert p.run == ["mid"] and p.preempted == [] and p.waiting == {"old": "pages"}  # it has slack: it waits
    grow.is_urgent = True
    p = plan(pool, [grow, within], holders)
    assert p.preempted == ["young"] and p.run == ["old", "mid"]  # the youngest gives its pages back, no one else
    pool.check()


def test_pages_only_move_from_younger_to_older_streams():
    pool = PagePool(8)
    holders = [hold(pool, "old", 4, started=1.0), hold(pool, "young", 4, started=2.0)]
    p = plan(pool, [playing("young", 2.0, 1, urgent=True)], holders)
    assert p.preempted == [] and p.waiting == {"young": "pages"}  # it stalls rather than take an older one's
    p = plan(pool, [playing("old", 1.0, 1, urgent=True), playing("young", 2.0, 1, urgent=True)], holders)
    assert p.preempted == ["young"] and p.run == ["old"] and p.waiting == {"young": "pages"}
    pool.check()


def test_a_stream_is_preempted_at_most_once_per_interval():
    pool = PagePool(8)
    holders = [hold(pool, "old", 4, started=1.0), hold(pool, "young", 4, started=2.0, preempted_at=10.0)]
    urgent = playing("old", 1.0, 1, urgent=True)
    assert plan(pool, [urgent], holders, now=14.0).preempted == []  # 4 s after its last preemption
    assert plan(pool, [urgent], holders, now=15.0).preempted == ["young"]
    pool.check()


def test_no_preemption_that_would_not_make_room():
    pool = PagePool(8)
    holders = [hold(pool, "old", 5, started=1.0), hold(pool, "young", 1, started=2.0), hold(pool, "b", 2, 3.0)]
    back = playing("back", started=1.5, pages=7, admitted=False, urgent=True)  # 0 free; the younger hold 3
    p = plan(pool, [back], holders)
    assert p.preempted == [] and p.waiting == {"back": "pages"}
    pool.check()


def test_a_non_stream_utterance_waits_only_behind_playing_streams_and_never_preempts():
    pool = PagePool(10)
    holders = [hold(pool, "a", 6, started=1.0)]
    p = plan(pool, [whole("w", 0.0, 6), new("n", 0.1, 1)], holders)
    assert p.waiting == {"w": "pages", "n": "pages"} and p.preempted == []  # n would leave w no chance
    pool.release("a")
    p = plan(pool, [whole("w", 0.0, 6), new("n", 0.1, 1)], [])
    assert p.run == ["w", "n"]  # w's pages go back after its step; n keeps the headroom
    pool.check()


def test_slots_and_real_time_capacity():
    pool = PagePool(20)
    p = plan(pool, [new("n1", 0.0, 1), new("n2", 1.0, 1), whole("w", 2.0, 1)], [], slots=3, room=1)
    assert p.run == ["w", "n1"] and p.waiting == {"n2": "capacity"}
    p = plan(pool, [playing("back", 0.0, 2, admitted=False), new("n3", 1.0, 1)], [], slots=0)
    assert p.waiting == {"back": "slots", "n3": "slots"}


def test_full_reservation_admits_whole_budgets_and_never_preempts():
    pool = PagePool(10)
    full = AdmissionConfig(reservation="full")
    holders = [hold(pool, "a", 6, started=1.0)]
    p = plan(pool, [playing("back", 0.5, 5, admitted=False, urgent=True), new("n", 0.0, 4)], holders, cfg=full)
    assert p.preempted == [] and p.waiting == {"back": "pages", "n": "pages"}  # n: back keeps its 5 pages
    p = plan(pool, [new("n", 0.0, 4)], holders, cfg=full)
    assert p.run == ["n"] and pool.streams["n"].budget == 4  # no headroom under full reservation
    pool.check()


def test_a_step_that_would_run_nothing_counts_as_a_stall():
    """Every admitted stream waits for a page and none is urgent yet: idling would only wait for the oldest to run
    dry (nothing could free pages meanwhile), so the youngest gives its pages back now, spare audio or not."""
    pool = PagePool(8)
    holders = [hold(pool, "old", 4, started=1.0), hold(pool, "young", 4, started=2.0, spare_s=-1.0)]
    p = plan(pool, [playing("old", 1.0, 1), playing("young", 2.0, 1)], holders)
    assert p.preempted == ["young"] and p.run == ["old"]
    pool.check()


def test_a_stuck_step_runs_the_oldest_playing_stream_the_scheduler_left_out():
    """Issue 20's 8 x 48-s streams on the CPU's 96 pages: after three preemptions the scheduler chose (earliest
    deadline first) the preempted streams' recomputes, which fill a step's token budget and cannot get pages, and
    left out the older streams that hold every page. Nothing ran, nothing could free pages, and it stayed so
    until the 300 s limit. Now the oldest playing stream runs instead, alone, taking pages from a younger one."""
    pool = PagePool(10)
    holders = [hold(pool, "a", 5, started=1.0), hold(pool, "c", 5, started=2.0)]  # no page free
    back = playing("b", started=3.0, pages=6, admitted=False, urgent=True)  # preempted: the youngest
    left_out = [playing("a", 1.0, 1, urgent=True, chosen=False), playing("c", 2.0, 1, urgent=True, chosen=False)]
    p = plan(pool, [back, *left_out], holders)
    assert p.run == ["a"] and p.preempted == ["c"] and set(p.waiting) == {"b", "c"}
    pool.check()
    # a left-out request that is no playing stream is not pulled in: it would take pages none of them gave back
    pool = PagePool(10)
    holders = [hold(pool, "a", 10, started=1.0)]
    p = plan(pool, [playing("a", 1.0, 1, urgent=True, admitted=True), new("n", 0.0, 1, chosen=False)], holders)
    assert p.run == [] and p.preempted == []


def test_an_urgent_stream_takes_pages_only_from_streams_with_audio_to_spare():
    """Preempting a stream that is itself about to run dry only moves the stall (and adds its recompute)."""
    pool = PagePool(9)
    holders = [
        hold(pool, "old", 3, 1.0),
        hold(pool, "mid", 3, 2.0, spare_s=5.0),
        hold(pool, "young", 3, 3.0, spare_s=-0.5),
    ]
    within = playing("young", 3.0, 0)  # something runs anyway: not an idle step
    p = plan(pool, [playing("old", 1.0, 2, urgent=True), within], holders)
    assert p.preempted == ["mid"] and p.run == ["old", "young"]
    pool.check()


def test_modules_do_not_import_torch():
    code = (
        "import sys, light_tts.decode.admission, light_tts.decode.page_pool, light_tts.decode.scheduler; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
