"""An Orpheus model directory as make_model --family orpheus writes it: recognised, read from its own files
(ids from tokenizer.json, optional lighttts.json), the prompt it is served, and the offline pipeline against the
engines (LLM engine + SNAC decode engine) run as the server runs them."""

import json
import shutil

import numpy as np
import pytest

from light_tts.errors import ModelDirError, RequestError, TextError
from light_tts.families import detect_family, load_family


@pytest.fixture(scope="module")
def model_dir(orpheus_dir):
    return orpheus_dir


@pytest.fixture(scope="module")
def pipeline(model_dir):
    from light_tts.orpheus_pipeline import OrpheusPipeline

    return OrpheusPipeline(model_dir)


def test_directory_is_recognised_and_read_from_its_files(model_dir, tmp_path):
    spec = detect_family(model_dir)
    family = load_family(spec)
    assert spec.name == family.name == "orpheus"
    cfg = family.load_model_config(model_dir)
    t = cfg.tokens
    assert (t.bos, t.end_of_text, t.start_of_human, t.start_of_speech, t.end_of_speech) == (
        128000,
        128009,
        128259,
        128257,
        128258,
    )
    assert t.first_audio == 128266 and cfg.body.vocab_size == 156940 and cfg.body.tie_word_embeddings
    assert cfg.body.rope_scaling.factor == 32 and not cfg.body.attention_bias
    assert round(cfg.tokens_per_second, 2) == 82.03 and cfg.voices[0] == "tara"
    # a plain Llama (no audio ids in its vocabulary) is no family's
    plain = tmp_path / "llama"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 128256}))
    with pytest.raises(ModelDirError, match="no model this server knows"):
        detect_family(plain)


def test_settings_file_and_missing_files(model_dir, tmp_path):
    from light_tts.families.orpheus import check_complete, load_model_config, prompt_layout

    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    (copy / "lighttts.json").write_text(json.dumps({"voices": ["pierre", "amelie"], "temperature": 0.4}))
    cfg = load_model_config(copy)
    assert cfg.voices == ("pierre", "amelie") and cfg.sampling.temperature == 0.4 and cfg.sampling.top_p == 0.8
    # audio-only sampling by default: at a frame boundary end-of-speech and the control ids up to the audio ids,
    # which end the utterance as it does; inside a frame the position's 4,096 audio ids
    layout = prompt_layout(cfg)
    assert cfg.audio_only and layout.stop_ids == frozenset(range(128258, 128266))
    first, codes = 128266, 4096
    assert layout.allowed_ids(0, 0) == (128258, first + codes)
    assert layout.allowed_ids(9, 0) == (first + 2 * codes, first + 3 * codes)  # position 2 of the second frame
    (copy / "lighttts.json").write_text(json.dumps({"audio_only": False}))
    layout = prompt_layout(load_model_config(copy))
    assert layout.stop_ids == {128258} and layout.allowed_ids(9, 0) == (0, 156940)  # the reference's whole vocabulary
    (copy / "lighttts.json").write_text(json.dumps({"audio_only": "no"}))
    with pytest.raises(ModelDirError, match="audio_only must be true or false"):
        load_model_config(copy)
    (copy / "lighttts.json").write_text(json.dumps({"voice": ["x"]}))
    with pytest.raises(ModelDirError, match="unknown keys voice"):
        load_model_config(copy)
    (copy / "snac_24khz" / "pytorch_model.bin").unlink()
    with pytest.raises(ModelDirError, match="snac_24khz/pytorch_model.bin"):
        check_complete(copy)


def test_prompt_voices_and_control_tokens(pipeline):
    fe = pipeline.frontend
    ids = fe.prompt_ids("Hello <laugh> there.", "tara")
    text = fe.tokenize("tara: Hello <laugh> there.")
    assert ids == [128000, 128259, 128000, *text, 128009, 128260, 128261, 128257]
    assert fe.tokenizer.decode(text) == "tara: Hello <laugh> there."  # the tag is text, passed through
    with pytest.raises(TextError, match="control tokens"):
        fe.prompt_ids("say <custom_token_3> now", "tara")
    with pytest.raises(RequestError, match="tara, leah"):
        fe.check_voice("alloy")
    assert len(fe.split("One sentence here. " * 40)) > 1


def test_pipeline_streams_whole_frames(pipeline):
    """fixed_tokens = 10 frames of audio ids: 10 x 2048 samples, streamed in windows that join to the whole."""
    from light_tts.request_rules import sentence_seed

    whole = list(pipeline.synthesize("Hi there.", "tara", seed=5, fixed_tokens=70))
    ids = list(pipeline.speech_tokens(pipeline.frontend.prompt_ids("Hi there.", "tara"), sentence_seed(5, 0), 70, 70))
    chunks = list(pipeline.audio(ids, sentence_seed(5, 0)))  # what synthesize(stream=True) yields
    assert len(whole) == 1 and len(whole[0]) == 10 * 2048 and np.abs(whole[0]).max() < 1
    # the first window 2 frames, then 1 a window, the last window its 3 (the end is known offline)
    assert [len(c) for c in chunks] == [4096] + [2048] * 5 + [6144]
    np.testing.assert_array_equal(np.concatenate(chunks), whole[0])


def test_engines_produce_the_pipelines_audio(model_dir, pipeline):
    """The LLM engine's ids through the SNAC engine, for two requests batched together, equal the offline
    pipeline's audio of each (the server's composition, in one process)."""
    from light_tts.decode.snac.snac_engine import SNACEngine
    from light_tts.families.orpheus import llm_spec, load_model_config
    from light_tts.llm.engine import EngineConfig, LLMEngine
    from light_tts.llm.request import LLMRequest

    cfg = load_model_config(model_dir)
    llm = LLMEngine(
        llm_spec(cfg),
        EngineConfig(data_type="float32", max_req_total_len=512, running_max_req_size=4, max_total_token_num=2048),
        "cpu",
    )
    codec = SNACEngine(cfg, model=pipeline.snac, max_batch_size=4)
    texts = {"a": ("tara", 9, 56), "b": ("leo", 4, 35)}  # voice, seed, fixed tokens
    for k, (voice, seed, n) in texts.items():
        llm.add_request(LLMRequest(k, pipeline.frontend.prompt_ids("Hello.", voice), seed=seed, min_len=n, max_len=n))
        codec.add_request(k, seed=seed)
    audio = {k: [] for k in texts}
    while llm.has_unfinished() or codec.num_active():
        for out in llm.step():
            codec.push_tokens(out.req_id, out.new_token_ids, out.finished)
        for out in codec.step():
            audio[out.req_id].append(out.audio)
    for k, (voice, seed, n) in texts.items():
        ids = list(pipeline.speech_tokens(pipeline.frontend.prompt_ids("Hello.", voice), seed, n, n))
        offline = np.concatenate(list(pipeline.audio(ids, seed)))
        assert len(offline) == n // 7 * 2048
        np.testing.assert_allclose(np.concatenate(audio[k]), offline, atol=1e-5)
