"""Frontend: text normalisation and splitting, the Qwen tokenizer, prompt features, the ONNX models, encode_prompt."""

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from light_tts.errors import AudioError, ModelDirError, TextError
from light_tts.frontend.audio import resample
from light_tts.frontend.features import kaldi_fbank, speaker_features, whisper_log_mel
from light_tts.frontend.frontend import Frontend, voice_key
from light_tts.frontend.onnx_models import CampPlusONNX, SpeechTokenizerONNX
from light_tts.frontend.prompt_mel import prompt_mel
from light_tts.frontend.text_norm import (
    TextNormalizer,
    contains_chinese,
    is_only_punctuation,
    number_to_words,
    remove_bracket,
    replace_blank,
    spell_out_number,
    split_paragraph,
)
from light_tts.frontend.tokenizer import QwenTokenizer
from light_tts.model_config import MelConfig, ModelConfig
from light_tts.model_dir import TOKENIZER_DIR
from light_tts.text_tokens import COSYVOICE2_SPECIAL_TOKENS
from light_tts.tools.make_onnx import write_campplus_onnx, write_speech_tokenizer_onnx
from light_tts.tools.make_tokenizer import write_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("frontend_model")
    write_tokenizer(d / TOKENIZER_DIR, "tiny")
    write_speech_tokenizer_onnx(d / "speech_tokenizer_v2.onnx", "tiny", seed=0)
    write_campplus_onnx(d / "campplus.onnx", "tiny", seed=0)
    return d


@pytest.fixture(scope="module")
def frontend(model_dir):
    return Frontend(ModelConfig(model_dir=model_dir))


def chirp(sr: int, seconds: float, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 150 * t * (1 + 2 * t)) + 0.02 * rng.standard_normal(len(t))
    return np.stack([x, 0.5 * x][:channels], axis=1).astype(np.float32)


# ---- text normalisation ----


@pytest.mark.parametrize(
    "digits,words",
    [
        ("0", "zero"),
        ("7", "seven"),
        ("13", "thirteen"),
        ("21", "twenty-one"),
        ("100", "one hundred"),
        ("101", "one hundred and one"),
        ("999", "nine hundred and ninety-nine"),
        ("2024", "two thousand and twenty-four"),
        ("1234", "one thousand, two hundred and thirty-four"),
        ("1000000", "one million"),
        ("1000001", "one million and one"),
    ],
)
def test_number_to_words(digits, words):
    assert number_to_words(digits) == words


def test_small_helpers():
    assert spell_out_number("I have 3 cats and 12 dogs") == "I have three cats and twelve dogs"
    assert contains_chinese("abc 中") and not contains_chinese("abc")
    assert replace_blank("你 好 hello world 吗") == "你好hello world吗"
    assert remove_bracket("（注）【重要】`code`——完") == "注重要code 完"
    assert is_only_punctuation("。，!?…") and is_only_punctuation("") and not is_only_punctuation("a.")


def count_words(text: str) -> list[int]:
    return list(range(len(text.split())))


def test_split_paragraph_packs_english_by_tokens():
    sentence = "one two three four five six seven eight nine ten. "  # 10 "tokens" with count_words
    pieces = split_paragraph(sentence * 16, count_words, "en")
    # a piece is cut when one more sentence would pass 80 and it already has more than 60
    assert [len(count_words(p)) for p in pieces] == [80, 80]
    assert "".join(pieces) == (sentence * 16).rstrip()
    assert [len(count_words(p)) for p in split_paragraph(sentence * 11, count_words, "en")] == [80, 30]
    # a last piece under merge_len (20) joins the previous one
    assert [len(count_words(p)) for p in split_paragraph(sentence * 9, count_words, "en")] == [90]


def test_split_paragraph_chinese_counts_characters_and_keeps_quotes():
    sentence = "这是一个有十个字的句。"  # 11 characters with the stop
    pieces = split_paragraph(sentence * 12, count_words, "zh")
    assert [len(p) for p in pieces] == [77, 55]
    assert split_paragraph("他说：“走吧。”好的！", count_words, "zh") == ["他说：“走吧。”好的！"]
    assert split_paragraph("no stop here", count_words, "en") == ["no stop here."]
    # the tail after the last stop is kept (upstream drops it) and gets a stop
    assert split_paragraph("第一句。第二句没有标点", count_words, "zh") == ["第一句。第二句没有标点。"]


@pytest.fixture(scope="module")
def normalizer():
    return TextNormalizer(lambda text: text.split())


def test_normalize_chinese(normalizer):
    assert normalizer.wetext is not None, "wetext should work offline (its FSTs ship in the wheel)"
    assert normalizer.normalize_and_split("今天是2024年3月5日，天气很好") == ["今天是二零二四年三月五日，天气很好。"]
    assert normalizer.normalize("面积是5m²，体积³（约）,") == "面积是五平方米，体积立方约。"
    assert normalizer.normalize("你好 - 世界，中文A - B") == "你好-世界，中文A，B"  # replace_blank runs first


def test_normalize_english(normalizer):
    assert normalizer.normalize_and_split("I have 3 apples. You have 12!") == ["I have three apples. You have twelve!"]
    assert normalizer.normalize("<|endofprompt|>Keep 3 as is") == "<|endofprompt|>Keep 3 as is"
    assert normalizer.normalize("   ") == ""


def test_builtin_fallback_without_wetext(monkeypatch):
    import light_tts.frontend.text_norm as text_norm

    monkeypatch.setattr(text_norm, "_load_wetext", lambda: None)
    fallback = TextNormalizer(lambda text: text.split())
    assert fallback.normalize_and_split("I paid 25 dollars") == ["I paid twenty-five dollars."]
    assert fallback.normalize_and_split("我有3个苹果，") == ["我有3个苹果。"]


@pytest.mark.parametrize("text", ["", "   \n\t ", "。。。！", "?!..."])
def test_unspeakable_text_is_rejected(normalizer, text):
    with pytest.raises(TextError):
        normalizer.normalize_and_split(text)


def test_too_long_text_is_rejected(normalizer):
    """One text limit for the offline pipeline and the server (request_rules.MAX_TEXT_CHARS)."""
    from light_tts.request_rules import MAX_TEXT_CHARS
    from light_tts.server.runtime.config import ServerConfig

    assert ServerConfig().max_text_chars == MAX_TEXT_CHARS
    with pytest.raises(TextError, match=f"100000 characters; the limit is {MAX_TEXT_CHARS}"):
        normalizer.normalize_and_split("a" * 100_000)


# ---- tokenizer ----


def test_tokenizer_loads_what_make_tokenizer_writes(model_dir):
    tok = QwenTokenizer(model_dir / TOKENIZER_DIR)
    num_bpe = len(json.loads((model_dir / TOKENIZER_DIR / "vocab.json").read_text()))
    assert len(tok) == num_bpe + 3 + 17 < 1200  # Qwen's 3 specials, then CosyVoice2's 17 new ones
    for text in ["Hello, world! It's 9 o'clock.", "今天天气很好，我们一起去公园散步吧。", "混合 CosyVoice 文本 😀"]:
        ids = tok.encode(text)
        assert all(0 <= i < num_bpe for i in ids)
        assert tok.decode(ids) == text
    specials = ["<|endoftext|>", *COSYVOICE2_SPECIAL_TOKENS]
    ids = [tok.encode(t) for t in specials]
    assert all(len(i) == 1 for i in ids)
    assert [i[0] for i in ids] == list(range(num_bpe, num_bpe + 20))  # upstream's order
    assert tok.encode("<|endofprompt|>hi[breath]") == [num_bpe + 3, *tok.encode("hi"), num_bpe + 4]
    assert tok.decode(tok.encode("a[breath]b")) == "ab"  # specials skipped as upstream


def test_make_tokenizer_config_and_limits(tmp_path):
    n = write_tokenizer(tmp_path / "full", "full")
    config = json.loads((tmp_path / "full" / "config.json").read_text())
    assert config["vocab_size"] == 151936 and config["hidden_size"] == 896 and config["num_key_value_heads"] == 2
    assert n == write_tokenizer(tmp_path / "again", "tiny", vocab_size=1100)
    assert (tmp_path / "full" / "merges.txt").read_bytes() == (tmp_path / "again" / "merges.txt").read_bytes()
    with pytest.raises(ValueError, match="vocab_size is 500"):
        write_tokenizer(tmp_path / "small", "tiny", vocab_size=500)


def test_missing_tokenizer_file_is_named(model_dir, tmp_path):
    for name in ["vocab.json", "tokenizer_config.json"]:
        (tmp_path / name).write_bytes((model_dir / TOKENIZER_DIR / name).read_bytes())
    with pytest.raises(ModelDirError, match="merges.txt"):
        QwenTokenizer(tmp_path)


# ---- features ----


def whisper_reference(x: np.ndarray, n_mels: int) -> np.ndarray:
    """Whisper's formula in float64 numpy: centred frames, periodic Hann, power, mel, log10, 8-decade floor."""
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    num_frames = 1 + (len(padded) - 400) // 160
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([padded[i * 160 : i * 160 + 400] for i in range(num_frames)]) * window
    power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2)[:-1].T  # (201, frames - 1)
    from transformers.audio_utils import mel_filter_bank  # an independent Slaney filterbank

    filters = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    ).T
    log_spec = np.log10(np.maximum(filters @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def test_whisper_log_mel_matches_formula():
    x = chirp(16000, 2.37)[:, 0]
    mel = whisper_log_mel(x, n_mels=128)
    assert mel.shape == (1, 128, len(x) // 160) and mel.dtype == torch.float32
    np.testing.assert_allclose(mel[0].numpy(), whisper_reference(x, 128), atol=2e-4)
    assert whisper_log_mel(x, n_mels=80).shape == (1, 80, len(x) // 160)


def kaldi_reference(x: np.ndarray, num_bins: int = 80, sr: int = 16000) -> np.ndarray:
    """Kaldi fbank in float64 numpy: 25/10 ms frames, DC removal, pre-emphasis 0.97, Povey window, power,
    triangular bins on 1127 ln(1 + f/700) from 20 Hz to Nyquist, natural log."""
    x = x.astype(np.float64)
    num_frames = 1 + (len(x) - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(num_frames)])
    frames -= frames.mean(axis=1, keepdims=True)
    frames = np.concatenate([frames[:, :1] * 0.03, frames[:, 1:] - 0.97 * frames[:, :-1]], axis=1)
    frames *= (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)) ** 0.85
    power = np.abs(np.fft.rfft(frames, 512, axis=1)) ** 2  # (frames, 257)

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    low, high = mel(20.0), mel(sr / 2)
    step = (high - low) / (num_bins + 1)
    bin_mel = mel(np.arange(256) * sr / 512)
    banks = np.zeros((num_bins, 257))
    for m in range(num_bins):
        left, centre, right = low + m * step, low + (m + 1) * step, low + (m + 2) * step
        rising, falling = (bin_mel - left) / (centre - left), (right - bin_mel) / (right - centre)
        banks[m, :256] = np.maximum(0, np.minimum(rising, falling))
    return np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))


def test_kaldi_fbank_matches_reference():
    x = chirp(16000, 1.5)[:, 0]
    feats = kaldi_fbank(x)
    assert feats.shape == (1 + (len(x) - 400) // 160, 80) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, kaldi_reference(x), atol=2e-3)
    centred = speaker_features(x)
    np.testing.assert_allclose(centred, feats - feats.mean(0), atol=1e-5)
    np.testing.assert_allclose(centred.mean(0), 0, atol=1e-5)


# ---- ONNX models ----


def test_speech_tokenizer_onnx(model_dir):
    model = SpeechTokenizerONNX(model_dir / "speech_tokenizer_v2.onnx")
    assert model.runner.input_names == ["feats", "feats_length"]
    feats = whisper_log_mel(chirp(16000, 2.0)[:, 0]).numpy()  # 200 frames
    tokens = model(feats)
    assert tokens.dtype == np.int32 and tokens.shape == (50,)
    assert tokens.min() >= 0 and tokens.max() < 6561 and len(set(tokens.tolist())) > 3
    for num_frames, num_tokens in [(1, 1), (4, 1), (5, 2), (199, 50)]:
        assert model(feats[:, :, :num_frames]).shape == (num_tokens,)
    np.testing.assert_array_equal(model(feats[:, :, :100]), tokens[:25])  # 4-frame blocks are independent


def test_campplus_onnx(model_dir):
    model = CampPlusONNX(model_dir / "campplus.onnx")
    emb = model(speaker_features(chirp(16000, 2.0)[:, 0]))
    assert emb.dtype == np.float32 and emb.shape == (192,) and np.isfinite(emb).all() and np.abs(emb).sum() > 0


def test_make_onnx_is_deterministic(tmp_path):
    paths = [write_speech_tokenizer_onnx(tmp_path / f"st{i}.onnx", "full", seed=s) for i, s in enumerate([3, 3, 4])]
    data = [p.read_bytes() for p in paths]
    assert data[0] == data[1] != data[2]
    campplus = [write_campplus_onnx(tmp_path / f"cp{i}.onnx", seed=5).read_bytes() for i in range(2)]
    assert campplus[0] == campplus[1]
    with pytest.raises(ValueError):
        write_campplus_onnx(tmp_path / "c.onnx", size="huge")


def test_bad_onnx_files_are_named(tmp_path):
    with pytest.raises(ModelDirError, match="missing.onnx"):
        CampPlusONNX(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(ModelDirError, match="broken.onnx"):
        SpeechTokenizerONNX(tmp_path / "broken.onnx")


# ---- Frontend ----


def wav_bytes(x: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_encode_prompt_matches_its_parts(frontend, model_dir):
    sr = 44100
    data = wav_bytes(chirp(sr, 3.3, channels=2), sr)
    prompt = frontend.encode_prompt(data, "希望你以后能够做的比我还好呦,")

    mono, _ = sf.read(io.BytesIO(data), dtype="float32")
    mono = mono.mean(axis=1)
    wav16k, wav24k = resample(mono, sr, 16000), resample(mono, sr, 24000)
    tokens = SpeechTokenizerONNX(model_dir / "speech_tokenizer_v2.onnx")(whisper_log_mel(wav16k).numpy())
    mel = prompt_mel(torch.from_numpy(wav24k)[None], MelConfig())[0].T.numpy()
    num_tokens = min(mel.shape[0] // 2, len(tokens))
    assert (len(tokens), mel.shape[0], num_tokens) == (83, 165, 82)  # the mel frames bound the prompt here

    assert prompt.speech_tokens.dtype == np.int32 and prompt.mel.dtype == np.float32
    np.testing.assert_array_equal(prompt.speech_tokens, tokens[:num_tokens])
    np.testing.assert_allclose(prompt.mel, mel[: 2 * num_tokens], atol=1e-5)
    assert prompt.mel.shape == (2 * len(prompt.speech_tokens), 80)
    emb = CampPlusONNX(model_dir / "campplus.onnx")(speaker_features(wav16k))
    assert prompt.embedding.shape == (192,) and prompt.embedding.dtype == np.float32
    np.testing.assert_allclose(prompt.embedding, emb, atol=1e-5)
    assert prompt.text_tokens.dtype == np.int32
    assert prompt.text_tokens.tolist() == frontend.tokenize("希望你以后能够做的比我还好呦。")


def test_frontend_text_and_voice_key(frontend):
    pieces = frontend.normalize_and_split("CosyVoice speaks text. " * 40)
    assert len(pieces) > 1 and all(len(frontend.tokenize(p)) <= 80 for p in pieces)
    a, b = wav_bytes(chirp(16000, 1.0), 16000), wav_bytes(chirp(16000, 1.1), 16000)
    assert voice_key(a) == frontend.voice_key(a) != voice_key(b) and len(voice_key(a)) == 64
    empty = frontend.encode_prompt(a, "  ").text_tokens  # an empty transcript is allowed (cross-lingual use)
    assert empty.dtype == np.int32 and empty.shape == (0,)


def test_encode_prompt_rejects_bad_audio(frontend):
    with pytest.raises(AudioError, match="at least"):
        frontend.encode_prompt(wav_bytes(chirp(16000, 0.1), 16000), "hi")
    with pytest.raises(AudioError, match="not a readable audio file"):
        frontend.encode_prompt(b"garbage" * 100, "hi")
    with pytest.raises(AudioError, match="the limit is 30 s"):
        frontend.encode_prompt(wav_bytes(np.zeros(31 * 16000, np.float32), 16000), "hi")
