"""The LLM engine with CosyVoice3's head and ids on the tiny CosyVoice3 fixture: upstream's greedy runs (an eos stop
at step 80, and the instruct run's stop on another stop id before min_len, since upstream masks only sos), RAS
batches equal the offline LM with the same seeds (the masked-id rule in the batched sampler), and bistream with
the prompt text through <|endofprompt|> placed right after sos."""

import pytest
import torch
from test_llm_engine import bistream_reference, make_engine, reference_tokens, run_all

from light_tts.llm.request import LLMRequest, TokenLayout
from light_tts.models.cosyvoice3.config import load_model_config
from light_tts.models.speech_lm import SpeechLM


@pytest.fixture(scope="module")
def model_cfg(cv3_fixture_dir):
    return load_model_config(cv3_fixture_dir)


@pytest.fixture(scope="module")
def state_dict(cv3_fixture_dir):
    return torch.load(cv3_fixture_dir / "llm.pt", weights_only=True)


@pytest.fixture(scope="module")
def lm(model_cfg, cv3_fixture_dir):
    return SpeechLM.from_checkpoint(model_cfg.llm, cv3_fixture_dir / "llm.pt")


@pytest.fixture(scope="module")
def io(cv3_fixture_dir):
    return torch.load(cv3_fixture_dir / "llm_io.pt", weights_only=False)


def test_layout_has_speech_row_specials(model_cfg):
    layout = TokenLayout.from_config(model_cfg.llm)
    assert (layout.sos, layout.task_id, layout.eos, layout.fill) == (6561, 6563, 6562, 6564)
    assert layout.num_special_rows == 0 and layout.text([0]) == [6761]
    assert layout.num_embeddings == 6761 + 151936
    assert layout.prompt_prefix_len([5, 151646, 7]) == 2 and layout.prompt_prefix_len([5, 7]) == 0


def test_greedy_runs_match_upstream(model_cfg, state_dict, io):
    """Both fixture runs: zero-shot stops on eos after 80 tokens; instruct (no prompt speech in the LLM) stops on
    id 6621 at step 8, before min_len 18: eos and the other stop ids are not masked."""
    engine = make_engine(model_cfg, state_dict)
    text = io["text"][0].tolist()
    reqs = [
        LLMRequest("zero", text, io["prompt_text"][0].tolist(), io["prompt_speech_token"][0].tolist(), greedy=True),
        LLMRequest("instruct", text, io["instruct_prompt_text"][0].tolist(), [], greedy=True),
    ]
    finished = {}
    tokens: dict[str, list[int]] = {}
    for req in reqs:
        engine.add_request(req)
    while engine.has_unfinished():
        for out in engine.step():
            tokens.setdefault(out.req_id, []).extend(out.new_token_ids)
            if out.finished:
                finished[out.req_id] = out.finish_reason
    assert tokens["zero"] == io["greedy_tokens"].tolist() and finished["zero"] == "stop"
    assert tokens["instruct"] == io["instruct_greedy_tokens"].tolist() and finished["instruct"] == "stop"
    assert len(tokens["instruct"]) < int(io["instruct_min_len"])


def test_ras_batch_equals_offline_lm(model_cfg, state_dict, lm, io):
    """Sampled requests, several seeds and lengths, some forced to a fixed length (min_len = max_len: no stop id
    until then): each equals the offline LM with its seed."""
    text, ptext, pspeech = io["text"][0].tolist(), io["prompt_text"][0].tolist(), io["prompt_speech_token"][0].tolist()
    reqs = [
        LLMRequest(
            f"r{i}",
            text[i % 3 :],
            ptext,
            pspeech[: 12 + 5 * i],
            seed=40 + i,
            min_len=30 if i % 2 else None,
            max_len=30 if i % 2 else None,
        )
        for i in range(6)
    ]
    engine = make_engine(model_cfg, state_dict)
    tokens = run_all(engine, {0: reqs[:4], 3: reqs[4:]})
    for req in reqs:
        assert tokens.get(req.req_id, []) == reference_tokens(lm, req), req.req_id
    assert all(len(tokens[r.req_id]) == 30 for r in reqs[1::2])


def test_a_fixed_length_forbids_every_stop(model_cfg, state_dict, lm, io):
    """The server's fixed_speech_tokens (min_len = max_len) gives exactly that many tokens, although CosyVoice3's
    MinLenRule lets stops through: the instruct run that stops on 6621 at step 8 runs to 20, greedy and sampled,
    as the offline LM does with the same fixed length (before, it stopped at 8: bench.streams' 10-s utterances
    of a random CosyVoice3 model ended at random lengths)."""
    text, prompt = io["text"][0].tolist(), io["instruct_prompt_text"][0].tolist()
    reqs = [
        LLMRequest("greedy", text, prompt, [], greedy=True, min_len=20, max_len=20),
        LLMRequest("ras", text, prompt, [], seed=5, min_len=20, max_len=20),
    ]
    tokens = run_all(make_engine(model_cfg, state_dict), {0: reqs})
    for req in reqs:
        assert len(tokens[req.req_id]) == 20 and tokens[req.req_id] == reference_tokens(lm, req), req.req_id
    assert tokens["greedy"][:8] == io["instruct_greedy_tokens"].tolist()  # as upstream up to its stop


def test_bistream_places_the_prompt_end_after_sos(model_cfg, state_dict, lm, io):
    text = io["text"][0].tolist() * 3
    req = LLMRequest(
        "b",
        text[:4],
        io["prompt_text"][0].tolist(),
        io["prompt_speech_token"][0].tolist(),
        greedy=True,
        max_len=40,
        bistream=True,
    )
    pieces = [text[4:11], text[11:20], text[20:]]
    engine = make_engine(model_cfg, state_dict)
    engine.add_request(req)
    seq = engine.scheduler.seqs["b"]
    layout = engine.layout
    prefix = io["prompt_text"][0].tolist().index(151646) + 1
    assert seq.token_ids[: 1 + prefix] == [layout.sos] + layout.text(io["prompt_text"][0].tolist()[:prefix])
    for i, piece in enumerate(pieces):
        engine.append_text("b", piece, is_last=i == len(pieces) - 1)
    assert run_all(engine).get("b", []) == bistream_reference(lm, req, pieces, 40)
