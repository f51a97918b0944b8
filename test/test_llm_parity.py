"""Speech-token LM parity: upstream fixtures, a transformers Qwen2 reference, the KV cache, strict loading, bistream."""

import json
from pathlib import Path

import pytest
import torch

from light_tts.errors import ModelDirError
from light_tts.model_config import LLMConfig, QwenConfig
from light_tts.models.speech_lm import SpeechLM, min_max_len
from light_tts.sampling import GreedySampler


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def qwen_config(config_json: Path) -> QwenConfig:
    c = json.loads(config_json.read_text())
    # released configs carry rope_theta at the top; configs written by transformers 5 nest it in rope_parameters
    rope_theta = c.get("rope_theta", c.get("rope_parameters", {}).get("rope_theta"))
    return QwenConfig(
        hidden_size=c["hidden_size"],
        num_hidden_layers=c["num_hidden_layers"],
        num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"],
        intermediate_size=c["intermediate_size"],
        vocab_size=c["vocab_size"],
        rms_norm_eps=c["rms_norm_eps"],
        rope_theta=rope_theta,
        max_position_embeddings=c["max_position_embeddings"],
    )


@pytest.fixture(scope="module")
def cfg(fixture_dir) -> LLMConfig:
    qwen = qwen_config(fixture_dir / "CosyVoice-BlankEN" / "config.json")
    return LLMConfig(llm_input_size=qwen.hidden_size, llm_output_size=qwen.hidden_size, qwen=qwen)


@pytest.fixture(scope="module")
def lm(cfg, fixture_dir) -> SpeechLM:
    return SpeechLM.from_checkpoint(cfg, fixture_dir / "llm.pt")


@pytest.fixture(scope="module")
def io(fixture_dir) -> dict:
    return torch.load(fixture_dir / "llm_io.pt", weights_only=False)


@pytest.fixture(scope="module")
def hf_reference(fixture_dir, io) -> dict:
    """transformers' Qwen2 on the same weights, decoding greedily with a full-length attention mask."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.Qwen2Config.from_pretrained(fixture_dir / "CosyVoice-BlankEN")
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    sd = torch.load(fixture_dir / "llm.pt", weights_only=True)
    hf.load_state_dict({k.removeprefix("llm.model."): v for k, v in sd.items() if k.startswith("llm.model.")})
    sos, task_id = sd["llm_embedding.weight"][0], sd["llm_embedding.weight"][1]
    speech_emb, dec_w, dec_b = sd["speech_embedding.weight"], sd["llm_decoder.weight"], sd["llm_decoder.bias"]
    text = torch.cat([io["prompt_text"], io["text"]], dim=1).long()
    with torch.no_grad():
        embeds = torch.cat(
            [
                sos.view(1, 1, -1),
                hf.model.embed_tokens(text),
                task_id.view(1, 1, -1),
                speech_emb[io["prompt_speech_token"].long()],
            ],
            dim=1,
        )
        cache, tokens, logprobs = None, [], []
        for step in range(io["max_len"]):
            num_seen = 0 if cache is None else cache.get_seq_length()
            mask = torch.ones(1, num_seen + embeds.size(1), dtype=torch.long)
            out = hf(
                inputs_embeds=embeds,
                attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
            )
            cache = out.past_key_values
            lp = (out.hidden_states[-1][0, -1] @ dec_w.T + dec_b).log_softmax(-1)
            logprobs.append(lp)
            token = int((lp[:6561] if step < io["min_len"] else lp).argmax())
            if token >= 6561:
                break
            tokens.append(token)
            embeds = speech_emb[token].view(1, 1, -1)
    return {"tokens": tokens, "step_logprobs": torch.stack(logprobs[:8])}


def teacher_forced_logprobs(lm: SpeechLM, io: dict, tokens: list[int], num_steps: int) -> torch.Tensor:
    with torch.inference_mode():
        cache = lm.new_cache()
        embeds = lm.build_prefill_embeds(io["text"], io["prompt_text"], io["prompt_speech_token"])
        steps = []
        for i in range(num_steps):
            steps.append(lm.forward_step(embeds, cache))
            embeds = lm.embed_speech(torch.tensor([tokens[i]]))
    return torch.stack(steps)


def test_prefill_logprobs_match_fixture(lm, io):
    first = teacher_forced_logprobs(lm, io, io["greedy_tokens"].tolist(), 1)[0]
    assert rel_err(first, io["step_logprobs"][0]) < 1e-4


def test_step_logprobs_match_reference(lm, io, hf_reference):
    ours = teacher_forced_logprobs(lm, io, hf_reference["tokens"], 8)
    for step in range(8):
        assert rel_err(ours[step], hf_reference["step_logprobs"][step]) < 1e-4, step


def test_greedy_tokens_match_reference(lm, io, hf_reference):
    assert min_max_len(io["text"].numel()) == (io["min_len"], io["max_len"]) == (18, 180)
    tokens = list(lm.generate(io["text"], io["prompt_text"], io["prompt_speech_token"], GreedySampler()))
    assert len(tokens) == 180
    assert tokens == hf_reference["tokens"]


def test_decode_steps_match_fixture_with_its_mask(fixture_dir):
    """llm_io.pt's decode steps came from upstream under transformers 5, where each decoded token attends only to
    sos (see light_tts/tools/parity.py); reproducing that mask on our modules gives the fixture exactly."""
    from light_tts.model_dir import load_model_config
    from light_tts.tools.parity import llm_checks

    checks = llm_checks(load_model_config(fixture_dir), fixture_dir)
    assert [c.name for c in checks if not c.passed] == [], checks


def full_recompute_logprobs(lm: SpeechLM, embeds: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.step_logprobs(lm.llm.model.model(embeds)[0, -1])


def test_kv_cache_equals_full_recompute(lm, io):
    with torch.inference_mode():
        cache = lm.new_cache()
        seq = lm.build_prefill_embeds(io["text"], io["prompt_text"], io["prompt_speech_token"])
        new = seq
        for _ in range(6):
            cached = lm.forward_step(new, cache)
            assert rel_err(cached, full_recompute_logprobs(lm, seq)) < 1e-5
            new = lm.embed_speech(torch.tensor([int(cached[:6561].argmax())]))
            seq = torch.cat([seq, new], dim=1)
        assert cache.seq_len == seq.size(1) - 1


def greedy_extend(lm: SpeechLM, embeds: torch.Tensor, num_tokens: int, reject_from: int | None):
    """No-cache reference decode: (tokens, embeds with every token appended)."""
    tokens = []
    for _ in range(num_tokens):
        token = GreedySampler().sample(full_recompute_logprobs(lm, embeds), tokens, reject_from)
        tokens.append(token)
        embeds = torch.cat([embeds, lm.embed_speech(torch.tensor([token]))], dim=1)
    return tokens, embeds


def test_bistream_interleaves_prompt_blocks(lm, io):
    """37 prompt speech tokens, 6 + 9 text tokens in pieces of 2: three 5/15 blocks, 8 tokens to finish the block."""
    text, prompt_text, prompt_speech = io["text"].reshape(-1), io["prompt_text"], io["prompt_speech_token"]
    pieces = list(text.split(2))
    out = list(lm.generate_bistream(pieces, prompt_text, prompt_speech, GreedySampler(), max_len=12))

    all_text = lm.embed_text(torch.cat([prompt_text.reshape(-1), text]))
    speech = lm.embed_speech(prompt_speech)
    sos, task_id = lm.special_embedding(0), lm.special_embedding(1)
    blocks = [sos] + [torch.cat([all_text[:, 5 * j : 5 * j + 5], speech[:, 15 * j : 15 * j + 15]], 1) for j in range(3)]
    first, seq = greedy_extend(lm, torch.cat(blocks, dim=1), 8, reject_from=6561)
    assert out[:8] == first
    # the fill after 8 tokens is not fed; text has ended, so the last token (again), task_id, then decode to eos
    final = torch.cat([seq, lm.embed_speech(torch.tensor([first[-1]])), task_id], dim=1)
    rest, _ = greedy_extend(lm, final, 4, reject_from=None)
    assert out[8:] == rest[: next((i for i, t in enumerate(rest) if t >= 6561), 4)]


def test_bistream_asks_for_text_every_15_tokens(lm, io):
    """No prompt speech, text in pieces of 4 and 5: [sos, 5 text] -> 15 tokens, fill, [5 text] -> 15 tokens, fill."""
    text, prompt_text = io["text"].reshape(-1), io["prompt_text"]
    no_speech = torch.zeros(1, 0, dtype=torch.int32)
    out = list(lm.generate_bistream([text[:4], text[4:]], prompt_text, no_speech, GreedySampler(), max_len=32))

    all_text = lm.embed_text(torch.cat([prompt_text.reshape(-1), text]))
    first, seq = greedy_extend(lm, torch.cat([lm.special_embedding(0), all_text[:, :5]], 1), 15, reject_from=6561)
    second, seq = greedy_extend(lm, torch.cat([seq, all_text[:, 5:10]], 1), 15, reject_from=6561)
    assert out[:30] == first + second
    final = torch.cat([seq, lm.embed_speech(torch.tensor([second[-1]])), all_text[:, 10:], lm.special_embedding(1)], 1)
    rest, _ = greedy_extend(lm, final, 2, reject_from=None)
    assert out[30:] == rest[: next((i for i, t in enumerate(rest) if t >= 6561), 2)]


def write_modified_checkpoint(fixture_dir: Path, tmp_path: Path, edit) -> Path:
    sd = torch.load(fixture_dir / "llm.pt", weights_only=True)
    edit(sd)
    path = tmp_path / "llm.pt"
    torch.save(sd, path)
    return path


def test_strict_load_rejects_missing_key(cfg, fixture_dir, tmp_path):
    path = write_modified_checkpoint(
        fixture_dir, tmp_path, lambda sd: sd.pop("llm.model.model.layers.1.mlp.up_proj.weight")
    )
    with pytest.raises(ModelDirError, match=r"missing \(1\): llm\.model\.model\.layers\.1\.mlp\.up_proj\.weight"):
        SpeechLM.from_checkpoint(cfg, path)


def test_strict_load_rejects_extra_key(cfg, fixture_dir, tmp_path):
    path = write_modified_checkpoint(
        fixture_dir, tmp_path, lambda sd: sd.update({"llm.model.extra.bias": torch.zeros(3)})
    )
    with pytest.raises(ModelDirError, match=r"unexpected \(1\): llm\.model\.extra\.bias"):
        SpeechLM.from_checkpoint(cfg, path)
