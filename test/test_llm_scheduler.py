"""LLM scheduler, KV allocator and prefix cache as pure CPU code (no torch): admission, batching limits,
preemption, errors, abort, prefix sharing, and the bistream feeding order."""

import subprocess
import sys

import pytest

from light_tts.llm.kv_allocator import KVAllocator
from light_tts.llm.prefix_cache import PrefixCache
from light_tts.llm.request import LLMRequest, Sequence, TokenLayout
from light_tts.llm.scheduler import Scheduler, SchedulerConfig
from light_tts.model_config import LLMConfig

LAYOUT = TokenLayout.from_config(LLMConfig())
SPEECH = 7  # any ordinary speech token


def config(**kw) -> SchedulerConfig:
    base = dict(
        num_kv_slots=1000,
        max_req_total_len=256,
        batch_max_tokens=512,
        running_max_req_size=8,
        router_max_wait_tokens=0,
        enable_prefix_cache=False,
    )
    return SchedulerConfig(**{**base, **kw})


def seq(req_id: str, num_text=4, num_prompt_speech=10, arrival=0, prompt_text=(1, 2, 3), **kw) -> Sequence:
    req = LLMRequest(req_id, list(range(10, 10 + num_text)), list(prompt_text), [5] * num_prompt_speech, **kw)
    return Sequence(req, LAYOUT, arrival, 256)


def step(sched: Scheduler, token=SPEECH):
    batch = sched.schedule()
    return batch, sched.postprocess(batch, [token] * len(batch.seqs))


def test_modules_do_not_import_torch():
    code = (
        "import sys, light_tts.llm.scheduler, light_tts.llm.kv_allocator, light_tts.llm.prefix_cache; "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_allocator_allocates_frees_and_catches_double_free():
    alloc = KVAllocator(10)
    a = alloc.allocate(4)
    assert a == [0, 1, 2, 3] and alloc.num_free == 6 and not alloc.can_allocate(7)
    with pytest.raises(MemoryError):
        alloc.allocate(7)
    alloc.free(a)
    assert alloc.num_free == 10
    with pytest.raises(RuntimeError):
        alloc.free([2])


def test_sequence_layout_and_lengths():
    s = seq("a", num_text=4, num_prompt_speech=10)
    text_base = LAYOUT.num_speech_rows + 2
    assert s.token_ids[0] == LAYOUT.sos and s.token_ids[1:4] == [text_base + 1, text_base + 2, text_base + 3]
    assert s.token_ids[8] == LAYOUT.task_id and s.token_ids[9:] == [5] * 10
    assert (s.min_len, s.max_len, s.prefix_len) == (8, 80, 4)


def test_prefill_respects_batch_tokens_and_running_size():
    sched = Scheduler(config(batch_max_tokens=50, running_max_req_size=2))
    for i in range(3):
        sched.add(seq(f"r{i}", arrival=i))  # 19 tokens each
    batch, outs = step(sched)
    assert batch.is_prefill and [s.req_id for s in batch.seqs] == ["r0", "r1"]  # 2 fit in 50 tokens and 2 rows
    assert [o.new_token_ids for o in outs] == [[SPEECH], [SPEECH]]
    batch, _ = step(sched)
    assert not batch.is_prefill and len(batch.seqs) == 2  # r2 has no row until one finishes


def test_router_max_wait_tokens_delays_prefill():
    sched = Scheduler(config(router_max_wait_tokens=2))
    sched.add(seq("a"))
    assert step(sched)[0].is_prefill
    sched.add(seq("b", arrival=1))
    kinds = [step(sched)[0].is_prefill for _ in range(3)]
    assert kinds == [False, False, True]


def test_stop_and_length_finish_and_free():
    sched = Scheduler(config())
    sched.add(seq("a", num_text=1))  # min_len 2, max_len 20
    step(sched)
    _, outs = step(sched, LAYOUT.eos)  # past min_len: eos stops
    assert outs[0].finished and outs[0].finish_reason == "stop" and outs[0].new_token_ids == []
    assert sched.allocator.num_used == 0 and not sched.has_unfinished()
    sched.add(seq("b", num_text=1, arrival=1))
    for _ in range(20):
        _, outs = step(sched)
    assert outs[0].finish_reason == "length"


def test_preempts_newest_and_recomputes():
    sched = Scheduler(config(num_kv_slots=45))
    sched.add(seq("old", arrival=0))
    sched.add(seq("new", arrival=1))
    step(sched)  # both prefilled: 38 slots
    for _ in range(3):
        step(sched)  # 44 slots
    batch, _ = step(sched)  # 2 more needed, 1 free: the newest goes back to the queue
    assert [s.req_id for s in batch.seqs] == ["old"] and sched.num_preemptions == 1
    new = sched.seqs["new"]
    assert new.num_computed == 0 and new.slots == [] and sched.waiting[0] is new
    assert new.num_tokens == 19 + 4  # generated tokens stay and are recomputed with the prompt


def test_lone_request_beyond_kv_ends_with_error():
    sched = Scheduler(config(num_kv_slots=22))
    sched.add(seq("a"))
    step(sched)
    for _ in range(3):
        step(sched)  # 19 prompt slots + 3 decode slots: the cache is full
    assert sched.schedule() is None
    outs = sched.take_outputs()
    assert outs[0].finished and outs[0].finish_reason.startswith("error:") and sched.allocator.num_used == 0


def test_prompt_too_long_is_rejected_at_once():
    sched = Scheduler(config(max_req_total_len=10))
    sched.add(seq("a"))
    outs = sched.take_outputs()
    assert outs[0].finish_reason.startswith("error:") and not sched.has_unfinished()


def test_abort_frees_everything():
    sched = Scheduler(config())
    sched.add(seq("a"))
    sched.add(seq("b", arrival=1))
    step(sched)
    assert sched.abort("a") and sched.allocator.num_used == 19
    assert sched.abort("b") and sched.allocator.num_used == 0 and sched.rows.num_free == 8


def test_prefix_cache_shares_then_evicts_lru():
    sched = Scheduler(config(num_kv_slots=50, enable_prefix_cache=True))
    sched.add(seq("a"))
    step(sched)
    sched.add(seq("b", num_text=6, arrival=1))  # same voice: sos + 3 prompt text tokens come from the cache
    batch, _ = step(sched)
    b = sched.seqs["b"]
    assert batch.is_prefill and b.num_shared == 4 and b.slots[:4] == sched.seqs["a"].slots[:4]
    sched.abort("a")
    sched.abort("b")
    assert sched.prefix_cache.num_evictable_slots == 4 and sched.allocator.num_used == 4
    sched.add(seq("c", num_text=32, prompt_text=(9, 9, 9), arrival=2))  # another voice: 47 slots, 46 free
    step(sched)
    assert sched.prefix_cache.num_cached_slots == 4  # the old voice was evicted, the new one cached


def test_prefix_entry_lookup_and_refcount():
    alloc = KVAllocator(10)
    cache = PrefixCache(alloc)
    slots = alloc.allocate(3)
    voice, other = (1, 2, 3), (1, 2, 4)
    assert cache.insert(voice, slots) and not cache.insert(voice, slots)
    assert cache.acquire(voice, 3) == slots and cache.acquire(voice, 2) is None and cache.acquire(other, 3) is None
    assert cache.evict(3) == 0  # two references held
    cache.release(voice)
    cache.release(voice)
    assert cache.evict(3) == 3 and alloc.num_free == 10


def test_bistream_feeding_order():
    req = LLMRequest("a", [11, 12], [1, 2, 3, 4, 5, 6], [5] * 20, bistream=True, max_len=100)
    s = Sequence(req, LAYOUT, 0, 256)
    t = LAYOUT.text
    # sos, [5 prompt text, 15 speech], then waits: 3 text tokens are not a block
    assert s.token_ids == [LAYOUT.sos] + t([1, 2, 3, 4, 5]) + [5] * 15 and not s.is_ready and s.prefix_len == 21
    s.feeder.add_text([13, 14], is_last=False)
    assert s.token_ids[21:] == t([6, 11, 12, 13, 14]) + [5] * 5 and s.is_ready
    assert s.feeder.next_fill_index == 10  # the last prompt block is completed by 10 generated tokens
    s.num_computed = s.num_tokens
    for i in range(10):
        assert s.forced_token() is None and s.forbids_stop()
        s.append_decoded(100 + i)
    assert s.forced_token() == LAYOUT.fill
    assert s.append_decoded(LAYOUT.fill) == [] and not s.is_ready  # fill: never fed, waits for text
    s.feeder.add_text([15, 16, 17, 18, 19, 20], is_last=True)
    s.num_computed = s.num_tokens - 5
    assert s.token_ids[-5:] == t([15, 16, 17, 18, 19]) and s.is_ready
    s.num_computed = s.num_tokens
    for i in range(15):
        s.append_decoded(200 + i)
    s.append_decoded(LAYOUT.fill)
    # text ended: the last speech token again, the leftover text, task_id; then decoding runs to a stop id
    assert s.token_ids[-3:] == [214] + t([20]) + [LAYOUT.task_id] and s.feeder.is_final
    assert not s.forbids_stop() and s.forced_token() is None
    s.append_decoded(LAYOUT.eos)
    assert s.is_finished and s.finish_reason == "stop" and s.num_output == 25


def test_late_text_is_dropped_and_failures_are_reported():
    sched = Scheduler(config())
    for name in ("a", "b"):
        sched.add(Sequence(LLMRequest(name, [11], [1, 2, 3], [5] * 4, bistream=True), LAYOUT, 0, 256))
    assert sched.abort("a") and sched.append_text("a", [12], is_last=True) is False
    assert sched.append_text("b", [12], is_last=False)
    assert sched.fail("b", "error:bad text") and not sched.fail("b", "error:again")
    outs = sched.take_outputs()
    assert [(o.req_id, o.finish_reason) for o in outs] == [("b", "error:bad text")] and sched.allocator.num_used == 0


def test_requests_waiting_for_text_are_preempted_when_nothing_else_runs():
    sched = Scheduler(config(num_kv_slots=45))
    sched.add(Sequence(LLMRequest("text", [], [1, 2, 3, 4, 5], [5] * 15, bistream=True), LAYOUT, 0, 256))
    for _ in range(16):
        step(sched)  # 15 speech tokens, then the forced fill: it waits for text, holding 36 slots
    assert not sched.seqs["text"].is_ready and sched.allocator.num_used == 36
    sched.add(seq("new", arrival=1))  # 19 tokens, 9 free, nothing can decode
    batch = sched.schedule()
    assert batch.is_prefill and [s.req_id for s in batch.seqs] == ["new"] and sched.num_preemptions == 1
    assert sched.seqs["text"].num_computed == 0 and sched.waiting[0].req_id == "text"


def test_first_hops_go_ahead_of_streams_far_ahead():
    """With ahead_tokens on, a decode step during a new request's first hop leaves out the requests that buffered
    more than that beyond real time; once every request has its first hop, all decode again."""
    now = [0.0]
    sched = Scheduler(config(ahead_tokens=50, first_hop_tokens=28), clock=lambda: now[0])
    sched.add(seq("old", num_text=20))
    step(sched)  # prefill
    for _ in range(120):  # 120 tokens in 0.1 s: far ahead of a listener (who heard 2.5 tokens' worth)
        step(sched)
        now[0] += 0.1 / 120
    sched.add(seq("new", num_text=20))
    batch, _ = step(sched)
    assert batch.is_prefill and [s.req_id for s in batch.seqs] == ["new"]
    batch, _ = step(sched)
    assert [s.req_id for s in batch.seqs] == ["new"]  # the old one waits
    for _ in range(27):
        step(sched)
    batch, _ = step(sched)
    assert sorted(s.req_id for s in batch.seqs) == ["new", "old"]  # first hop done: both decode
    now[0] += 10.0  # the old one's listener caught up: it is no longer ahead even during a first hop
    sched.add(seq("newer", num_text=20))
    step(sched)
    batch, _ = step(sched)
    assert "old" in [s.req_id for s in batch.seqs]


def test_waits_for_a_row_or_kv_are_reported_once_with_their_reason():
    """A request that cannot start (every batch row taken, or no KV room) is reported once, with why."""
    sched = Scheduler(config(running_max_req_size=1))
    sched.add(seq("a"))
    sched.add(seq("b"))
    step(sched)
    step(sched)
    assert sched.take_waits() == [("b", "batch")] and sched.take_waits() == []
    sched.abort("a")
    step(sched)
    assert sched.is_waiting == set()  # b runs: its wait ended
    tight = Scheduler(config(num_kv_slots=30))  # 19 prompt tokens each: the second does not fit beside the first
    tight.add(seq("c"))
    tight.add(seq("d"))
    step(tight)
    assert tight.take_waits() == [("d", "kv")]
