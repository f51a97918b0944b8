"""The offline pipeline on a tiny model made by make_model: audio for Chinese and English, streamed or not, and
typed errors for bad models and bad requests."""

import io
import shutil

import numpy as np
import pytest
import soundfile as sf

from light_tts.errors import AudioError, ModelDirError, RequestError, TextError, TooLargeError
from light_tts.frontend.features import whisper_log_mel
from light_tts.pipeline import Pipeline
from light_tts.tools.make_model import make_model

SAMPLES_PER_TOKEN = 960


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("tiny"), size="tiny", seed=3)


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    return Pipeline(tiny_dir)


def wav_bytes(seconds: float, sr: int = 16000, fmt: str = "WAV", channels: int = 1) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format=fmt)
    return buf.getvalue()


PROMPT = wav_bytes(2.0)


def assert_plausible(audio: np.ndarray, num_text_tokens: int):
    assert audio.dtype == np.float32 and np.isfinite(audio).all()
    assert np.sqrt(np.mean(audio**2)) > 1e-4, "silent"
    assert np.abs(audio).max() <= 0.99 + 1e-6  # HiFT's audio_limit
    assert len(audio) % SAMPLES_PER_TOKEN == 0
    # between upstream's min_len (2x text tokens) and max_len (20x) speech tokens
    assert 2 * num_text_tokens <= len(audio) // SAMPLES_PER_TOKEN <= 20 * num_text_tokens


@pytest.mark.parametrize("text", ["Hello there, how are you?", "你好，今天天气很好。"])
def test_nonstream_and_stream_audio(pipe, text):
    num_text = sum(len(pipe.frontend.tokenize(s)) for s in pipe.frontend.normalize_and_split(text))
    whole = np.concatenate(list(pipe.synthesize(text, PROMPT, "a prompt", seed=5)))
    assert_plausible(whole, num_text)
    chunks = list(pipe.synthesize(text, PROMPT, "a prompt", stream=True, seed=5))
    assert len(chunks) >= 2
    streamed = np.concatenate(chunks)
    assert_plausible(streamed, num_text)
    # the same seed samples the same speech tokens, so both paths give the same number of samples
    assert len(streamed) == len(whole)


def test_streamed_chunks_equal_session_on_same_tokens(pipe):
    """Every token becomes exactly 960 samples: chunks of a session add up with nothing lost or repeated."""
    prompt = pipe.frontend.encode_prompt(PROMPT, "a prompt")
    tokens = list(pipe.speech_tokens(pipe.frontend.tokenize("Short test sentence."), prompt, seed=7))
    session = pipe.token2wav.session(prompt, seed=7)
    one_by_one = [c for t in tokens for c in session.feed([t])] + [session.finish()]
    session = pipe.token2wav.session(prompt, seed=7)
    all_at_once = session.feed(tokens) + [session.finish()]
    assert sum(map(len, one_by_one)) == SAMPLES_PER_TOKEN * len(tokens)
    np.testing.assert_array_equal(np.concatenate(one_by_one), np.concatenate(all_at_once))


def test_seed_reproducible_and_speed(pipe):
    a = np.concatenate(list(pipe.synthesize("Same seed.", PROMPT, "p", seed=11)))
    b = np.concatenate(list(pipe.synthesize("Same seed.", PROMPT, "p", seed=11)))
    np.testing.assert_array_equal(a, b)
    fast = np.concatenate(list(pipe.synthesize("Same seed.", PROMPT, "p", seed=11, speed=2.0)))
    assert len(fast) == (len(a) // 480 // 2) * 480  # mel frames halved, 480 samples each


def test_bistream_pieces(pipe):
    pieces = ["Text arrives ", "in several ", "pieces from a ", "language model."]
    chunks = list(pipe.synthesize_bistream(iter(pieces), PROMPT, "a prompt", seed=2))
    audio = np.concatenate(chunks)
    assert np.isfinite(audio).all() and len(audio) > 0 and len(audio) % SAMPLES_PER_TOKEN == 0


def test_prompt_formats(pipe):
    for data in (wav_bytes(2.0, sr=44100, fmt="FLAC", channels=2), wav_bytes(2.0, sr=8000, fmt="OGG")):
        prompt = pipe.frontend.encode_prompt(data, "p")
        assert len(prompt.mel) == 2 * len(prompt.speech_tokens) > 0


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty"),
        (b"this is not audio at all" * 10, "not a readable audio file"),
        (wav_bytes(31.0, sr=8000), "30"),
    ],
)
def test_bad_prompt_audio(pipe, data, match):
    with pytest.raises(AudioError, match=match):
        list(pipe.synthesize("Hello.", data, "p"))


@pytest.mark.parametrize("text", ["", "   \n\t", "。，！？...", "x" * 100_000])
def test_bad_text(pipe, text):
    with pytest.raises(TextError):
        list(pipe.synthesize(text, PROMPT, "p"))


@pytest.mark.parametrize("speed,stream", [(-1.0, False), (0.0, False), (float("nan"), False), (1.5, True)])
def test_bad_speed(pipe, speed, stream):
    with pytest.raises(RequestError, match="speed"):
        list(pipe.synthesize("Hello.", PROMPT, "p", stream=stream, speed=speed))


def test_incomplete_model_dir(tiny_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    (d / "campplus.onnx").unlink()
    with pytest.raises(ModelDirError, match="campplus.onnx"):
        Pipeline(d)
    shutil.copy(tiny_dir / "campplus.onnx", d / "campplus.onnx")
    (d / "flow.pt").write_bytes(b"corrupt")
    with pytest.raises(ModelDirError, match="flow.pt"):
        Pipeline(d)


# ---- modes (the LLM-side rules are in test_modes.py): what reaches the LLM and the flow


def test_every_mode_keeps_the_flow_prompt_and_builds_its_llm_prompt(pipe):
    """The flow gets the voice's tokens, mel and embedding in every mode; the LLM gets the transcript and the
    prompt speech (zero-shot), the instruction and its end marker (instruct), or nothing (cross-lingual)."""
    end = pipe.frontend.tokenizer.token_id("<|endofprompt|>")
    cases = {
        "zero_shot": dict(prompt_text="a prompt"),
        "cross_lingual": dict(prompt_text=None),
        "instruct": dict(prompt_text="a prompt", instruction="Speak slowly."),
        "forced cross_lingual": dict(prompt_text="a prompt", mode="cross_lingual"),
    }
    built = {
        name: pipe.encode(PROMPT, kw["prompt_text"], kw.get("mode"), kw.get("instruction"))
        for name, kw in cases.items()
    }
    flow = built["zero_shot"][1]
    for name, (_llm, prompt) in built.items():
        assert np.array_equal(prompt.speech_tokens, flow.speech_tokens) and np.array_equal(prompt.mel, flow.mel)
        assert np.array_equal(prompt.embedding, flow.embedding) and len(prompt.speech_tokens) > 0, name
    llm = {name: b[0] for name, b in built.items()}
    assert llm["zero_shot"].text_tokens.tolist() == pipe.frontend.prompt_text_tokens("a prompt").tolist()
    assert np.array_equal(llm["zero_shot"].speech_tokens, flow.speech_tokens)
    assert llm["instruct"].text_tokens.tolist() == pipe.frontend.tokenize("Speak slowly.") + [end]
    for name in ("instruct", "cross_lingual", "forced cross_lingual"):
        assert len(llm[name].speech_tokens) == 0, name
    assert len(llm["cross_lingual"].text_tokens) == 0 and len(llm["forced cross_lingual"].text_tokens) == 0


def test_voice_conversion_inputs_are_the_source_tokens_and_the_voice_prompt(pipe):
    source = wav_bytes(3.0)
    tokens, prompt = pipe.vc_inputs(source, PROMPT)
    assert len(tokens) == 75  # 25 per second of the source, untruncated (as upstream's frontend_vc)
    samples, rate = pipe.frontend.decode_prompt_audio(source)
    assert rate == 16000
    assert np.array_equal(tokens, pipe.frontend.speech_tokenizer(whisper_log_mel(samples, n_mels=128).numpy()))
    flow = pipe.encode(PROMPT, "a prompt", None, None)[1]
    assert np.array_equal(prompt.speech_tokens, flow.speech_tokens) and np.array_equal(prompt.mel, flow.mel)
    with pytest.raises(TooLargeError, match="source audio is 4.0 s; the limit is 3.5 s"):
        pipe.vc_inputs(wav_bytes(4.0), PROMPT, max_source_seconds=3.5)
