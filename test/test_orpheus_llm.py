"""Llama in the LLM engine (Orpheus's LM) against transformers' LlamaForCausalLM with random weights (llama3 rope
scaling, GQA groups of 3, tied and untied heads), and the engine's temperature / top-p / repetition-penalty
sampling against the offline per-request sampler."""

import dataclasses

import pytest
import torch

from light_tts.llm.engine import EngineConfig, LLMEngine
from light_tts.llm.nucleus_sampler import NucleusSampler, sample_one
from light_tts.llm.prompt_layout import PromptLayout
from light_tts.llm.request import LLMRequest
from light_tts.llm.spec import LLMSpec, LMArch
from light_tts.llm.weights import causal_lm_state_dict
from light_tts.model_config import NucleusConfig
from light_tts.models.orpheus.config import read_body
from light_tts.models.orpheus.lm import generate, load_causal_lm
from light_tts.models.weights import read_safetensors

transformers = pytest.importorskip("transformers")

VOCAB = 512
# a small "Orpheus" id layout inside VOCAB: stop id 99, audio ids 100.. in 7 positions of 50 codes
LAYOUT = PromptLayout(
    vocab_size=VOCAB,
    stop_ids=frozenset({99}),
    first_audio_id=100,
    codes_per_position=50,
    frame_len=7,
    default_max_len=40,
)
# audio-only sampling: each position's codebook, and the stop id at a frame boundary (it sits just below the audio)
AUDIO_ONLY = dataclasses.replace(LAYOUT, audio_only=True)
SAMPLING = NucleusConfig(temperature=0.8, top_p=0.9, repetition_penalty=1.3)
CPU_CFG = dict(data_type="float32", max_req_total_len=256, running_max_req_size=8, max_total_token_num=2048)
PROMPTS = [[1, 5, 9, 33, 70, 2], [3, 4, 200, 201, 202, 17, 18, 19, 20, 21, 400], [7] * 3]


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def hf_dir(request, tmp_path_factory):
    """A random transformers Llama saved in the released layout (config.json + model.safetensors)."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        initializer_range=0.1,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=request.param,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    out = tmp_path_factory.mktemp("llama")
    model.save_pretrained(out)
    return out, model


def spec_of(model_dir, layout: PromptLayout = LAYOUT) -> LLMSpec:
    body = read_body(model_dir / "config.json")
    return LLMSpec(
        LMArch(body, VOCAB, VOCAB, tie_head=body.tie_word_embeddings, logit_range=layout.sampled_range()),
        layout,
        lambda rows, device: NucleusSampler(SAMPLING, layout, rows, device),
        lambda sd: causal_lm_state_dict(sd, body.num_hidden_layers, False, body.tie_word_embeddings),
        lambda: read_safetensors(model_dir),
    )


def run(engine, reqs, arrivals=None) -> dict[str, list[int]]:
    arrivals = arrivals or {0: reqs}
    tokens, step = {r.req_id: [] for r in reqs}, 0
    while engine.has_unfinished() or any(k >= step for k in arrivals):
        for r in arrivals.get(step, []):
            engine.add_request(r)
        for out in engine.step():
            assert not (out.finish_reason or "").startswith("error"), out.finish_reason
            tokens[out.req_id] += out.new_token_ids
        step += 1
    return tokens


def test_logprobs_match_transformers(hf_dir):
    """Three requests of different lengths in one engine (packed prefill, then batched decode steps) against
    transformers fed each request alone: float32 log-probs within 1e-4 relative L2 at every step."""
    model_dir, hf = hf_dir
    engine = LLMEngine(spec_of(model_dir), EngineConfig(**CPU_CFG), "cpu")
    reqs = [LLMRequest(f"r{i}", p, greedy=True, min_len=6, max_len=6) for i, p in enumerate(PROMPTS)]
    for r in reqs:
        engine.add_request(r)
    ours = {r.req_id: [] for r in reqs}
    tokens = {r.req_id: [] for r in reqs}
    while engine.has_unfinished():
        batch = engine.scheduler.schedule()
        ids = engine.runner.run(batch)
        for seq, lp in zip(batch.seqs, engine.runner.last_logits.log_softmax(dim=-1)):
            ours[seq.req_id].append(lp)
        for out in engine.scheduler.postprocess(batch, ids):
            tokens[out.req_id] += out.new_token_ids
    for r in reqs:
        with torch.no_grad():
            ref = hf(torch.tensor([r.text_token_ids + tokens[r.req_id]])).logits[0].float().log_softmax(dim=-1)
        ref = ref[len(r.text_token_ids) - 1 :]
        assert len(ours[r.req_id]) == 6
        for step, lp in enumerate(ours[r.req_id]):
            assert float((lp - ref[step]).norm() / ref[step].norm()) < 1e-4, (r.req_id, step)


def test_greedy_tokens_match_transformers(hf_dir):
    model_dir, hf = hf_dir
    engine = LLMEngine(spec_of(model_dir), EngineConfig(**CPU_CFG), "cpu")
    prompt = PROMPTS[1]
    # free greedy decoding (min_len 0: any id, the stop id included)
    ours = run(engine, [LLMRequest("g", prompt, greedy=True, max_len=24)])["g"]
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=99,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )[0, len(prompt) :].tolist()
    assert ours == [t for t in ref if t != 99][: len(ours)] and len(ours) >= 1
    offline = load_causal_lm(read_body(model_dir / "config.json"), read_safetensors(model_dir))
    greedy = list(generate(offline, prompt, lambda logits, decoded: int(logits.argmax()), LAYOUT.stop_ids, 24))
    assert greedy == ours


@pytest.mark.parametrize("audio_only", [False, True])
def test_sampling_matches_offline_and_is_batch_invariant(hf_dir, audio_only):
    """Nucleus + penalty draws: each request decodes what the offline sampler decodes alone (same counter
    uniforms), whatever else is in its batch, with staggered arrivals; audio-only, the engine's head scores only
    the sampled range (ids 99-449 of 512) and the offline sampler the whole vocabulary under the same ranges."""
    model_dir, _ = hf_dir
    layout = AUDIO_ONLY if audio_only else LAYOUT
    engine = LLMEngine(spec_of(model_dir, layout), EngineConfig(**CPU_CFG, router_max_wait_tokens=1), "cpu")
    reqs = [LLMRequest(f"s{i}", PROMPTS[i % 3] + [i], seed=100 + i, max_len=12 + i) for i in range(5)]
    tokens = run(engine, reqs, {0: reqs[:2], 3: reqs[2:4], 5: reqs[4:]})
    offline = load_causal_lm(read_body(model_dir / "config.json"), read_safetensors(model_dir))
    for r in reqs:
        expected = list(
            generate(
                offline,
                r.text_token_ids,
                lambda logits, decoded, s=r.seed: sample_one(
                    SAMPLING,
                    logits,
                    decoded,
                    layout.allowed_ids(len(decoded), 0),
                    s,
                    first=layout.sampled_range()[0],
                ),
                layout.stop_ids,
                r.max_len,
                layout.sampled_range(),  # the logits of the ids the engine's head scores
            )
        )
        assert tokens[r.req_id] == expected, r.req_id
    assert len({tuple(t) for t in tokens.values()}) == 5


def test_preempted_request_samples_the_same(hf_dir):
    """A preemption recomputes the request and rebuilds its penalty set from what it decoded: same ids."""
    model_dir, _ = hf_dir
    reqs = [LLMRequest(f"p{i}", PROMPTS[i], seed=i, max_len=30) for i in range(3)]
    roomy = run(LLMEngine(spec_of(model_dir), EngineConfig(**CPU_CFG), "cpu"), reqs)
    tight = LLMEngine(
        spec_of(model_dir), EngineConfig(**{**CPU_CFG, "max_total_token_num": 60}, router_max_wait_tokens=0), "cpu"
    )
    assert run(tight, reqs) == roomy and tight.scheduler.num_preemptions > 0


def test_min_len_gives_audio_ids_in_frame_order(hf_dir):
    """Before min_len a request emits only audio ids, position by position (fixed_speech_tokens: N / 7 whole
    frames from any weights); after it, anything."""
    model_dir, _ = hf_dir
    engine = LLMEngine(spec_of(model_dir), EngineConfig(**CPU_CFG), "cpu")
    ids = run(engine, [LLMRequest("f", PROMPTS[0], seed=3, min_len=21, max_len=21)])["f"]
    assert len(ids) == 21
    assert [(t - 100) // 50 for t in ids] == [i % 7 for i in range(21)]


def test_prompt_layout_refuses_what_it_cannot_run(hf_dir):
    model_dir, _ = hf_dir
    engine = LLMEngine(spec_of(model_dir), EngineConfig(**CPU_CFG), "cpu")
    engine.add_request(LLMRequest("big", [VOCAB + 1]))
    engine.add_request(LLMRequest("voice", [1, 2], prompt_speech_token_ids=[3]))
    engine.add_request(LLMRequest("bi", [1, 2], bistream=True))
    reasons = {o.req_id: o.finish_reason for o in engine.step()}
    assert reasons["big"].startswith("error:token ids") and "prompt audio" in reasons["voice"]
    assert "bistream" in reasons["bi"]


def test_audio_only_layout_offers_each_positions_codebook_and_stops_at_frame_boundaries():
    assert AUDIO_ONLY.allowed_ids(0, 0) == (99, 150) and AUDIO_ONLY.allowed_ids(7, 0) == (99, 150)
    assert AUDIO_ONLY.allowed_ids(3, 0) == (250, 300)
    assert AUDIO_ONLY.allowed_ids(7, 10) == (100, 150)  # before min_len no stop, as without audio_only
    assert LAYOUT.allowed_ids(3, 0) == (0, VOCAB)
    with pytest.raises(ValueError, match="not stop ids"):  # 100-109 would be sampleable at a boundary
        dataclasses.replace(LAYOUT, first_audio_id=110, audio_only=True)


def test_audio_only_requests_emit_whole_frames(hf_dir):
    """Free-running requests (no min_len) on random weights: every id is its position's audio id, and a request
    that stops early stops at a frame boundary; without audio_only the same requests leave the codebooks."""
    model_dir, _ = hf_dir

    def tokens(layout):
        engine = LLMEngine(spec_of(model_dir, layout), EngineConfig(**CPU_CFG), "cpu")
        return run(engine, [LLMRequest(f"r{i}", p, seed=i, max_len=40) for i, p in enumerate(PROMPTS)])

    def in_codebooks(ids):
        return all(100 + n % 7 * 50 <= t < 150 + n % 7 * 50 for n, t in enumerate(ids))

    constrained = tokens(AUDIO_ONLY)
    assert all(in_codebooks(ids) and (len(ids) == 40 or len(ids) % 7 == 0) for ids in constrained.values())
    assert not all(in_codebooks(ids) for ids in tokens(LAYOUT).values())
