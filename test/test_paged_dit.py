"""The packed, paged DiT flow (the decode engine's hot path for CosyVoice3) against the dense per-stream cache of
models/cosyvoice3/flow on the tiny CosyVoice3 fixture, CPU, float32: several streams packed into each pass with
first, middle and final chunks, a whole utterance padded to a graph bucket, a shared voice prefix, fp8 pages."""

import pytest
import torch
from test_paged_flow import MAX_TOKENS, NUM_PAGES, NUM_SLOTS, Stream, admit, drive, make_spec, rel_err

from light_tts.decode.dit.dit_cache import DiTCache, DiTCacheShape
from light_tts.decode.dit.paged_dit import PagedDiT
from light_tts.decode.flow.flow_inputs import Bucket
from light_tts.decode.page_pool import PagePool
from light_tts.models.cosyvoice3.config import load_model_config
from light_tts.models.cosyvoice3.flow import DiTFlow


@pytest.fixture(scope="module")
def flow(cv3_fixture_dir):
    cfg = load_model_config(cv3_fixture_dir)
    return cfg, DiTFlow.from_checkpoint(cfg.flow, cfg.path("flow.pt"))


def new_pass(cfg, f, kv_dtype=torch.float32):
    cache = DiTCache(
        DiTCacheShape.from_config(cfg.flow), NUM_PAGES, NUM_SLOTS, torch.float32, kv_dtype, torch.device("cpu")
    )
    return cache, PagedDiT(f, cache, MAX_TOKENS), PagePool(NUM_PAGES)


def run_paged(paged: PagedDiT, specs, bucket=None) -> list[torch.Tensor]:
    inputs = paged.build_inputs(specs, bucket=bucket, table_width=MAX_TOKENS // 25)
    mel = paged(inputs)
    return [mel[a : a + n] for a, n in zip(inputs.frame_starts, inputs.num_frames)]


def make_streams(f, shapes):
    return [Stream(f, f"s{i}", p, n, 10 + i, 20 + i) for i, (p, n) in enumerate(shapes)]


@pytest.mark.parametrize("kv_dtype, tolerance", [(torch.float32, 1e-5), (torch.float8_e4m3fn, 1e-2)])
def test_packed_paged_streams_equal_dense_cache(flow, kv_dtype, tolerance):
    """Prompts on and off page boundaries, one stream ending before its first hop; fp8 pages (per-head scales)
    stay close to the float32 cache."""
    cfg, f = flow
    cache, paged, pool = new_pass(cfg, f, kv_dtype)
    worst = drive(f, make_streams(f, [(30, 90), (50, 60), (12, 20)]), pool, cache, lambda s: run_paged(paged, s))
    print(f"paged DiT vs dense worst chunk rel L2 ({kv_dtype}) {worst:.2e}")
    assert worst < tolerance


def test_shared_prefix_pages_equal_a_fresh_stream(flow):
    """Stream b of the same voice takes a's first prompt page and the conv context saved at its end: its chunks
    equal the dense flow's as if it had computed the prompt itself."""
    cfg, f = flow
    cache, paged, pool = new_pass(cfg, f)
    a, b = make_streams(f, [(40, 30), (40, 45)])
    b.p_tok, b.p_mel, b.emb = a.p_tok, a.p_mel, a.emb  # the same voice
    b.dense = f.stream_start(b.p_tok, b.p_mel, b.emb)
    for i, s in enumerate((a, b)):
        cache.spks[1 + i] = f._speaker(s.emb)[0]
    pool.admit("s0", MAX_TOKENS // 25)
    new, finalize = a.next_chunk()
    spec = make_spec(a, pool, 1, new, finalize, read_slot=0)
    spec.saves = [(spec.num_new, 1), (25, 3)]  # a also saves its context at the prefix boundary into slot 3
    run_paged(paged, [spec])
    pool.register_prefix("s0", "voice", 1, 3)
    pool.admit("s1", MAX_TOKENS // 25, "voice")
    b.t0 = 25
    new, finalize = b.next_chunk()
    spec = make_spec(b, pool, 2, new, finalize, read_slot=3)
    ref = f.stream_chunk(b.dense, torch.tensor([new], dtype=torch.int32), finalize)
    (mel,) = run_paged(paged, [spec])
    assert rel_err(mel[2 * (40 - 25) :].t()[None], ref) < 1e-5


def test_whole_utterance_and_bucket_padding_equal_dense(flow):
    """A non-stream utterance (full attention, upstream's final chunk) next to a streamed first chunk, padded to a
    graph bucket."""
    cfg, f = flow
    cache, paged, pool = new_pass(cfg, f)
    a, b = make_streams(f, [(40, 70), (25, 80)])
    admit(f, [a, b], pool, cache)
    whole = make_spec(a, pool, 1, a.tokens, finalize=True, read_slot=0)
    whole.full_attention = True
    new, _ = b.next_chunk()
    first = make_spec(b, pool, 2, new, finalize=False, read_slot=0)
    got = run_paged(paged, [whole, first], bucket=Bucket(num_tokens=512, num_rows=4))
    ref_whole = f.inference(
        torch.tensor([a.tokens], dtype=torch.int32), a.p_tok, a.p_mel, a.emb, streaming=False, finalize=True
    )
    ref_first = f.stream_chunk(b.dense, torch.tensor([new], dtype=torch.int32), False)
    assert rel_err(got[0][80:].t()[None], ref_whole) < 1e-5
    assert rel_err(got[1][50:].t()[None], ref_first) < 1e-5
