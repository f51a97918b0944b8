"""The packed, paged flow (the decode engine's hot path) against the dense per-stream flow cache of models/flow on
the tiny fixture model, CPU, float32: several streams packed into each pass, with first, middle and final chunks,
whole utterances and a shared voice prefix."""

import numpy as np
import pytest
import torch

from light_tts.decode.flow.flow_cache import FlowCache, FlowCacheShape
from light_tts.decode.flow.flow_inputs import Bucket, ChunkSpec, build_flow_inputs
from light_tts.decode.flow.paged_flow import PagedFlow
from light_tts.decode.page_pool import PagePool
from light_tts.model_dir import load_model_config
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.token2wav import ChunkSchedule, HopPolicy, first_hop_pad

NUM_PAGES, NUM_SLOTS, MAX_TOKENS = 96, 16, 400


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def flow(fixture_dir):
    cfg = load_model_config(fixture_dir)
    return cfg, Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt"))


class Stream:
    """One stream driven both ways: the dense reference state and the paged pass's bookkeeping."""

    def __init__(self, flow: Flow, name: str, prompt_len: int, num_tokens: int, seed: int, prompt_seed: int):
        g = np.random.default_rng(prompt_seed)
        self.p_tok = torch.tensor(g.integers(0, 6561, prompt_len), dtype=torch.int32)[None]
        self.p_mel = torch.tensor(g.standard_normal((2 * prompt_len, 80)) - 5, dtype=torch.float32)[None]
        self.emb = torch.tensor(g.standard_normal(192), dtype=torch.float32)[None]
        self.tokens = np.random.default_rng(seed).integers(0, 6561, num_tokens).tolist()
        self.name = name
        self.dense = flow.stream_start(self.p_tok, self.p_mel, self.emb)
        self.schedule = ChunkSchedule(HopPolicy("fixed"), first_hop_pad(prompt_len), 3)
        self.schedule.tokens.extend(self.tokens)
        self.t0 = 0  # tokens cached in the paged pool (prompt included)
        self.done = False

    def next_chunk(self) -> tuple[list[int], bool]:
        finalize = not self.schedule.ready()
        return self.schedule.chunk_tokens(finalize), finalize


def make_spec(s: Stream, pool: PagePool, slot: int, new: list[int], finalize: bool, read_slot: int) -> ChunkSpec:
    p = s.p_tok.shape[1]
    is_first = s.t0 == 0 or (s.t0 < p)
    tokens = (s.p_tok[0, s.t0 :].tolist() + new) if is_first else new
    la = 0 if finalize else 3
    num_new = len(tokens) - la
    need = -(-(s.t0 + num_new) // 25) - len(pool.streams[s.name].page_table)
    if need > 0:
        pool.allocate(s.name, need)
    cond = np.zeros((2 * num_new, 80), np.float32)
    prompt_frames = max(0, 2 * p - 2 * s.t0)
    cond[:prompt_frames] = s.p_mel[0, 2 * s.t0 : 2 * p].numpy()
    return ChunkSpec(
        slot=slot,
        read_slot=read_slot,
        page_table=pool.streams[s.name].page_table,
        t0=s.t0,
        tokens=tokens,
        num_lookahead=la,
        cond=cond,
    )


def run_paged(paged: PagedFlow, cache: FlowCache, specs: list[ChunkSpec], bucket=None) -> list[torch.Tensor]:
    inputs = build_flow_inputs(
        specs, cache.shape, NUM_SLOTS, cache.scratch_page, cache.device, bucket, table_width=MAX_TOKENS // 25
    )
    mel = paged(inputs)
    return [mel[a : a + n] for a, n in zip(inputs.frame_starts, inputs.num_frames)]


def admit(f, streams: list[Stream], pool: PagePool, cache) -> None:
    """Stream i gets pages in the pool and slot 1 + i (its speaker vector there)."""
    for i, s in enumerate(streams):
        pool.admit(s.name, MAX_TOKENS // 25)
        cache.spks[1 + i] = f._speaker(s.emb)[0]


def drive(f, streams: list[Stream], pool: PagePool, cache, run) -> float:
    """Every stream chunk by chunk, all live streams packed into each pass (run(specs) -> each row's mel); the
    worst chunk's relative error to the dense cache (f.stream_chunk)."""
    admit(f, streams, pool, cache)
    worst = 0.0
    while not all(s.done for s in streams):
        live = [(i, s) for i, s in enumerate(streams) if not s.done]
        specs, expected = [], []
        for i, s in live:
            new, finalize = s.next_chunk()
            specs.append(make_spec(s, pool, 1 + i, new, finalize, read_slot=0 if s.t0 == 0 else 1 + i))
            expected.append(f.stream_chunk(s.dense, torch.tensor([new], dtype=torch.int32), finalize))
        for (_i, s), spec, mel, ref in zip(live, specs, run(specs), expected):
            p = s.p_tok.shape[1]
            mel = mel[max(0, 2 * p - 2 * s.t0) :].t()[None]  # the dense flow drops the prompt's frames
            assert mel.shape == ref.shape
            worst = max(worst, rel_err(mel, ref))
            s.t0 += spec.num_new
            if spec.num_lookahead == 0:
                s.done = True
            else:
                s.schedule.advance()
    return worst


def test_packed_paged_streams_equal_dense_cache(flow):
    """The kernels' torch references run here (test_flow_kernels.py checks the Triton kernels against them on the
    engine's strided views: the interpreter is too slow for whole passes)."""
    cfg, f = flow
    shape = FlowCacheShape.from_config(cfg.flow)
    cache = FlowCache(shape, NUM_PAGES, NUM_SLOTS, torch.float32, torch.float32, torch.device("cpu"))
    paged = PagedFlow(f, cache, MAX_TOKENS)
    # prompts of different lengths (on and off chunk boundaries); the shortest stream ends before its first hop
    streams = [Stream(f, f"s{i}", p, n, 10 + i, 20 + i) for i, (p, n) in enumerate([(30, 90), (50, 60), (12, 20)])]
    worst = drive(f, streams, PagePool(NUM_PAGES), cache, lambda specs: run_paged(paged, cache, specs))
    print(f"paged vs dense worst chunk rel L2 {worst:.2e}")
    assert worst < 1e-5


def test_whole_utterance_and_bucket_padding_equal_dense(flow):
    """A non-stream utterance (full attention) next to a streamed first chunk, run padded to a graph bucket."""
    cfg, f = flow
    shape = FlowCacheShape.from_config(cfg.flow)
    cache = FlowCache(shape, NUM_PAGES, NUM_SLOTS, torch.float32, torch.float32, torch.device("cpu"))
    paged = PagedFlow(f, cache, MAX_TOKENS)
    pool = PagePool(NUM_PAGES)
    a, b = Stream(f, "a", 40, 70, 1, 2), Stream(f, "b", 25, 80, 3, 4)
    admit(f, [a, b], pool, cache)
    whole = make_spec(a, pool, 1, a.tokens, finalize=True, read_slot=0)
    whole.full_attention = True
    new, _ = b.next_chunk()
    first = make_spec(b, pool, 2, new, finalize=False, read_slot=0)
    got = run_paged(paged, cache, [whole, first], bucket=Bucket(num_tokens=512, num_rows=4))
    ref_whole = f.inference(
        torch.tensor([a.tokens], dtype=torch.int32), a.p_tok, a.p_mel, a.emb, streaming=False, finalize=True
    )
    ref_first = f.stream_chunk(b.dense, torch.tensor([new], dtype=torch.int32), False)
    assert rel_err(got[0][80:].t()[None], ref_whole) < 1e-5
    assert rel_err(got[1][50:].t()[None], ref_first) < 1e-5
