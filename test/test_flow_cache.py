"""The per-request flow cache: each streamed chunk equals upstream's full-prefix recompute of that chunk."""

import copy

import pytest
import torch

from light_tts.model_dir import load_model_config
from light_tts.models.cosyvoice2.flow import Flow
from light_tts.tools.parity import rel_l2

LOOKAHEAD = 3


@pytest.fixture(scope="module")
def setup(fixture_dir):
    cfg = load_model_config(fixture_dir)
    flow = Flow.from_checkpoint(cfg.flow, cfg.path("flow.pt"))
    io = torch.load(fixture_dir / "flow_hift_io.pt", weights_only=False)
    # 180 tokens, enough for hops 38, 25, 50, 25 (+3 lookahead) and a final chunk of 42
    tokens = torch.cat([io["token"], io["token"][:, :40]], dim=1)
    prompt = (io["prompt_token"], io["prompt_feat"], io["embedding"])
    return flow, tokens, prompt


def test_chunks_match_full_prefix_recompute(setup):
    flow, tokens, prompt = setup
    num_prompt = prompt[0].shape[1]
    first_hop = 25 + (-num_prompt % 25)
    assert first_hop == 38
    state = flow.stream_start(*prompt)
    offset, streamed = 0, []
    for hop in (first_hop, 25, 50, 25):
        mel = flow.stream_chunk(state, tokens[:, offset : offset + hop + LOOKAHEAD], finalize=False)
        full = flow.inference(tokens[:, : offset + hop + LOOKAHEAD], *prompt, streaming=True, finalize=False)
        assert mel.shape == (1, 80, 2 * hop)
        assert rel_l2(mel, full[:, :, 2 * offset :]) < 1e-4
        streamed.append(mel)
        offset += hop
    assert state.num_tokens == num_prompt + offset

    final = flow.stream_chunk(state, tokens[:, offset:], finalize=True)
    assert final.shape == (1, 80, 2 * (tokens.shape[1] - offset))
    # the cached final chunk is upstream's streaming=True, finalize=True recompute of the last frames
    chunk_causal = flow.inference(tokens, *prompt, streaming=True, finalize=True)
    assert rel_l2(final, chunk_causal[:, :, 2 * offset :]) < 1e-4
    assert rel_l2(torch.cat(streamed + [final], dim=2), chunk_causal) < 1e-4
    # upstream's own final chunk uses full attention over everything; report how far the cached one is
    exact = flow.inference(tokens, *prompt, streaming=False, finalize=True)[:, :, 2 * offset :]
    diff = rel_l2(final, exact)
    print(f"final chunk, cached chunk-causal vs upstream full attention: rel L2 {diff:.4f}")
    assert 0 < diff < 0.5


def test_state_is_reusable_by_copy(setup):
    """stream_chunk replaces state fields instead of writing into cached tensors, so a shallow copy can be
    re-run (a scheduler retrying a chunk, or timing it) with identical results."""
    flow, tokens, prompt = setup
    state = flow.stream_start(*prompt)
    flow.stream_chunk(state, tokens[:, : 38 + LOOKAHEAD], finalize=False)
    snapshot = copy.copy(state)
    a = flow.stream_chunk(state, tokens[:, 38 : 63 + LOOKAHEAD], finalize=False)
    b = flow.stream_chunk(snapshot, tokens[:, 38 : 63 + LOOKAHEAD], finalize=False)
    assert torch.equal(a, b)


def test_misaligned_chunk_is_rejected(setup):
    flow, tokens, prompt = setup
    state = flow.stream_start(*prompt)
    with pytest.raises(ValueError, match="boundary"):
        flow.stream_chunk(state, tokens[:, : 25 + LOOKAHEAD], finalize=False)  # 37 + 25 is not a multiple of 25
