"""CosyVoice3 beyond the parity CLI: the released directory's variants (legacy weight-norm keys), the windowed HiFT
stream against one whole call for any chunking, the silent-token filter, the family's prompts and a random model
written by make_model that the normal loaders and the offline pipeline read."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from light_tts.families import detect_family, family_named
from light_tts.families.base import CROSS_LINGUAL, INSTRUCT, ZERO_SHOT
from light_tts.models.cosyvoice3.config import load_model_config
from light_tts.models.cosyvoice3.hift import CausalHiFT
from light_tts.models.cosyvoice3.hift.streaming import new_stream, stream_chunk
from light_tts.tools.parity import rel_l2

FAMILY = family_named("cosyvoice3")


@pytest.fixture(scope="module")
def hift(cv3_fixture_dir):
    cfg = load_model_config(cv3_fixture_dir)
    return CausalHiFT.from_checkpoint(cfg.hift, cfg.flow, cv3_fixture_dir / "hift.pt")


def test_config_holds_cosyvoice3_facts(cv3_fixture_dir):
    cfg = load_model_config(cv3_fixture_dir)
    ids = cfg.llm.ids
    assert (ids.num_rows, ids.eos, ids.fill, ids.sos_row, ids.task_row) == (6761, 6562, 6564, 6561, 6563)
    assert ids.stop_ids == tuple(range(6561, 6761)) and not ids.decoder_bias
    assert ids.min_len.masked_id == 6561 and ids.min_len.reject_from is None  # upstream masks sos, not eos
    assert cfg.feat.fmax is None and cfg.feat.top_hz == 12000
    assert cfg.frontend.speech_tokenizer == "speech_tokenizer_v3.onnx"
    assert cfg.frontend.tokenizer_version == "cosyvoice3"
    assert cfg.llm.prompt_end_text_id == 151646  # no tokenizer files: upstream's id
    assert detect_family(cv3_fixture_dir).name == "cosyvoice3"


def test_legacy_weight_norm_keys_load_the_same(cv3_fixture_dir, hift, tmp_path):
    """Released hift.pt files may store weight norm as weight_g / weight_v: the same module results."""
    sd = torch.load(cv3_fixture_dir / "hift.pt", weights_only=True)
    legacy = {
        k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        ): v
        for k, v in sd.items()
    }
    assert any(k.endswith(".weight_g") for k in legacy)
    torch.save(legacy, tmp_path / "hift.pt")
    cfg = load_model_config(cv3_fixture_dir)
    other = CausalHiFT.from_checkpoint(cfg.hift, cfg.flow, tmp_path / "hift.pt")
    mel = torch.randn(1, 80, 40)
    assert torch.equal(hift.inference(mel)[0], other.inference(mel)[0])


@pytest.mark.parametrize("chunks", [[76, 100, 200, 24], [3, 9, 50, 1, 7, 90], [300]])
def test_windowed_stream_equals_one_whole_call(hift, chunks):
    """Each chunk runs the vocoder over its own frames and a fixed left margin (with the phase carried), yet the
    stream equals one call over the whole mel: upstream re-runs over everything at every chunk for this."""
    torch.manual_seed(0)
    mel = torch.randn(1, 80, sum(chunks)) * 2 - 4
    whole, _ = hift.inference(mel, finalize=True)
    stream, start, out = new_stream(hift), 0, []
    for i, n in enumerate(chunks):
        out.append(stream_chunk(hift, stream, mel[:, :, start : start + n], finalize=i == len(chunks) - 1))
        start += n
        if i < len(chunks) - 1:  # 8 frames held back until more arrive
            assert sum(o.shape[1] for o in out) == max(0, start - 8) * 480
    streamed = torch.cat(out, dim=1)
    assert streamed.shape == whole.shape
    assert rel_l2(streamed, whole) < 1e-5
    assert stream.mel.shape[2] <= 32 + 8 + 8 + max(chunks)  # the state stays bounded, not the whole utterance


def test_silent_token_filter_drops_long_silent_runs():
    f = FAMILY.speech_token_filter()
    silent, speech = 1, 100
    tokens = [silent] * 7 + [speech] + [silent] * 3 + [speech]
    assert [t for t in tokens if f.keep(t)] == [silent] * 5 + [speech] + [silent] * 3 + [speech]
    assert family_named("cosyvoice2").speech_token_filter() is None


def test_prompts_follow_upstream_examples():
    zero = FAMILY.llm_prompt(ZERO_SHOT, "希望你以后能够做的比我还好呦。")
    assert zero.text == "You are a helpful assistant.<|endofprompt|>希望你以后能够做的比我还好呦。"
    assert zero.uses_prompt_speech
    instruct = FAMILY.llm_prompt(INSTRUCT, "ignored", "请用广东话表达。")
    assert instruct.text == "You are a helpful assistant. 请用广东话表达。<|endofprompt|>"
    assert not instruct.uses_prompt_speech
    cross = FAMILY.llm_prompt(CROSS_LINGUAL, "ignored")
    assert cross.text == "You are a helpful assistant.<|endofprompt|>" and cross.counts_in_length
    assert not cross.uses_prompt_speech
    given = "You are a helpful assistant.<|endofprompt|>own transcript"
    assert FAMILY.llm_prompt(ZERO_SHOT, given).text == given


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from light_tts.tools.make_model import writer_of

    return writer_of("cosyvoice3")(tmp_path_factory.mktemp("cv3") / "tiny", size="tiny", seed=1)


def wav_bytes(seconds: float = 2.0, sr: int = 16000) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def test_random_model_loads_like_a_released_one(tiny_dir):
    from light_tts.pipeline import Pipeline

    FAMILY.check_complete(tiny_dir)
    pipe = Pipeline(tiny_dir)
    assert pipe.cfg.llm.prompt_end_text_id == pipe.frontend.tokenizer.token_id("<|endofprompt|>")
    assert len(pipe.frontend.tokenizer) <= pipe.cfg.llm.qwen.vocab_size
    llm_prompt, prompt = pipe.encode(wav_bytes(), "a prompt", None, None)
    transcript = pipe.frontend.tokenize("a prompt")  # after the system text and <|endofprompt|>
    assert llm_prompt.text_tokens.tolist()[-len(transcript) - 1 :] == [pipe.cfg.llm.prompt_end_text_id, *transcript]
    tokens = list(pipe.speech_tokens(pipe.frontend.tokenize("Hello there."), llm_prompt, seed=3))
    tokens = (tokens * 40)[:60] or [5] * 60  # a random LM stops early: a fixed length for the codec
    whole = pipe.token2wav.offline(tokens, prompt, seed=0)
    session = pipe.token2wav.session(prompt, seed=0)
    chunks = session.feed(tokens) + [session.finish()]
    assert len(chunks) >= 2 and sum(map(len, chunks)) == len(whole) == 960 * len(tokens)
    assert np.isfinite(whole).all() and np.abs(whole).max() <= 0.99 + 1e-6


def test_full_size_has_the_released_parameter_counts(tmp_path):
    """make_model's full size (its yaml and config.json, modules on the meta device) against the counts of the
    released checkpoints (shared/docs/cosyvoice3-model.md)."""
    import json

    from light_tts.models.cosyvoice3.flow import DiTFlow
    from light_tts.models.speech_lm import SpeechLM
    from light_tts.tools.make_model import qwen_config_json
    from light_tts.tools.make_model_cosyvoice3 import SIZES, cosyvoice3_yaml

    (tmp_path / "CosyVoice-BlankEN").mkdir()
    (tmp_path / "cosyvoice3.yaml").write_text(cosyvoice3_yaml(SIZES["full"], "full", 0))
    (tmp_path / "CosyVoice-BlankEN" / "config.json").write_text(json.dumps(qwen_config_json(SIZES["full"])))
    cfg = load_model_config(tmp_path)
    with torch.device("meta"):
        lm, flow = SpeechLM(cfg.llm), DiTFlow(cfg.flow)
        hift = CausalHiFT(cfg.hift, cfg.flow)
    unique = lambda m: sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())  # noqa: E731
    # the LLM's count has the tied lm_head once; ours holds it as its own (unused) parameter
    assert unique(lm) - cfg.llm.qwen.vocab_size * cfg.llm.qwen.hidden_size == 506_148_480
    assert unique(flow) == 332_257_088
    assert unique(hift) == 20_779_887
