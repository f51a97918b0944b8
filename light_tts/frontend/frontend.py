"""The CosyVoice frontend: text -> sentences -> text tokens; prompt audio + transcript -> a Prompt for LLM and flow.

Which speech tokenizer, which special text tokens and which prompt-mel parameters come from the model's config
(its family's loader sets them: CosyVoice2 speech_tokenizer_v2 and fmax 8 kHz, CosyVoice3 v3 and 12 kHz)."""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from light_tts.errors import AudioError, TextError, TooLargeError
from light_tts.frontend.audio import MAX_PROMPT_SECONDS, decode_audio, resample
from light_tts.frontend.features import SAMPLE_RATE, speaker_features, whisper_log_mel
from light_tts.frontend.onnx_models import CampPlusONNX, SpeechTokenizerONNX
from light_tts.frontend.prompt import Prompt
from light_tts.frontend.prompt_mel import prompt_mel
from light_tts.frontend.text_norm import MAX_TEXT_CHARS, PieceJoiner, TextNormalizer, clean_text
from light_tts.frontend.tokenizer import QwenTokenizer
from light_tts.model_config import ModelConfig
from light_tts.model_dir import TOKENIZER_DIR

MIN_PROMPT_SECONDS = 0.2  # shorter prompts give no usable speech token
PROMPT_TEXTS_CACHED = 1024  # prompt transcripts whose tokens a frontend keeps (normalising one costs milliseconds)


def voice_key(wav_bytes: bytes) -> str:
    """Content hash of the uploaded prompt audio: equal bytes give equal speech tokens, embedding and mel."""
    return hashlib.sha256(wav_bytes).hexdigest()


class Frontend:
    """Loads the tokenizer and the two ONNX models of a model directory; keeps no per-request state."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        max_text_chars: int = MAX_TEXT_CHARS,
        max_prompt_seconds: float = MAX_PROMPT_SECONDS,
        prompt_device: str | None = None,
    ):
        """prompt_device: run the speech tokenizer and the speaker model as torch modules there (onnx_torch.py);
        None: ONNX Runtime on the host's cores."""
        self.cfg = model_cfg
        self.max_prompt_seconds = max_prompt_seconds
        self.tokenizer = QwenTokenizer(model_cfg.path(TOKENIZER_DIR), model_cfg.frontend.tokenizer_version)
        self.control_tags = self.tokenizer.special_tokens  # [breath], <strong>, ...: kept whole through the text
        self.normalizer = TextNormalizer(self.tokenizer.encode, max_text_chars, self.control_tags)
        self.speech_tokenizer = SpeechTokenizerONNX(model_cfg.path(model_cfg.frontend.speech_tokenizer), prompt_device)
        self.campplus = CampPlusONNX(model_cfg.path("campplus.onnx"), prompt_device)

    def normalize_and_split(self, text: str) -> list[str]:
        return self.normalizer.normalize_and_split(text)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def sentence_tokens(self, text: str, voice: str | None = None) -> list[list[int]]:
        """The text tokens of each sentence of a request's text (the voice is its prompt, not a name: unused);
        TextError when nothing is left to speak after normalisation."""
        sentences = [tokens for s in self.normalize_and_split(text) if (tokens := self.tokenize(s))]
        if not sentences:
            raise TextError("tts_text has nothing to speak after normalisation")
        return sentences

    def piece_tokens(self, piece: str) -> list[int]:
        """Tokens of one bistream text piece: taken as is, as upstream does, minus control characters and
        terminal escapes (text_norm.clean_text; a lone surrogate raises TextError)."""
        piece = clean_text(piece)
        return self.tokenize(piece) if piece else []

    def piece_joiner(self) -> PieceJoiner:
        """For text arriving in pieces: keeps a control tag split between two pieces whole (text_norm)."""
        return PieceJoiner(self.control_tags)

    voice_key = staticmethod(voice_key)

    def encode_prompt(self, wav_bytes: bytes, prompt_text: str) -> Prompt:
        """As upstream frontend_zero_shot with the normalised prompt text; raises AudioError / TextError."""
        text_tokens = self.prompt_text_tokens(prompt_text)
        speech_tokens, embedding, mel = self.prompt_features(wav_bytes)
        return Prompt(text_tokens=text_tokens, speech_tokens=speech_tokens, embedding=embedding, mel=mel)

    def prompt_text_tokens(self, prompt_text: str) -> np.ndarray:
        """Normalised and tokenized (read-only: kept for the voice's next request, PROMPT_TEXTS_CACHED of them;
        every request of a saved voice brings the same transcript)."""
        return self._prompt_text_tokens(prompt_text)

    @functools.lru_cache(maxsize=PROMPT_TEXTS_CACHED)  # noqa: B019 (a process holds its frontends for good)
    def _prompt_text_tokens(self, prompt_text: str) -> np.ndarray:
        tokens = np.asarray(self.tokenize(self.normalizer.normalize(prompt_text)), dtype=np.int32)
        tokens.flags.writeable = False
        return tokens

    def prompt_features(self, wav_bytes: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What depends on the prompt audio only: see audio_features; raises AudioError."""
        return self.audio_features(*self.decode_prompt_audio(wav_bytes))

    def decode_prompt_audio(self, wav_bytes: bytes) -> tuple[np.ndarray, int]:
        """(float32 mono samples, their rate) of a usable prompt; raises AudioError."""
        wav, sr = decode_audio(wav_bytes, self.max_prompt_seconds)
        if len(wav) < MIN_PROMPT_SECONDS * sr:
            raise AudioError(f"prompt audio is {len(wav) / sr:.2f} s; it must be at least {MIN_PROMPT_SECONDS} s")
        return wav, sr

    def audio_features(self, wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Through the speech tokenizer and the speaker model (CAM++): (speech_tokens int32 [P], embedding
        float32 [E], mel float32 [ratio*P, mels])."""
        wav16k = resample(wav, sr, SAMPLE_RATE)
        speech_tokens = self.speech_tokenizer(whisper_log_mel(wav16k, n_mels=128).numpy())
        embedding = self.campplus(speaker_features(wav16k))
        mel = self.mel_frames(resample(wav, sr, self.cfg.feat.sampling_rate))

        # the flow needs exactly token_mel_ratio mel frames per prompt token: cut both to the shorter
        ratio = self.cfg.token_mel_ratio
        num_tokens = min(mel.shape[0] // ratio, len(speech_tokens))
        if num_tokens == 0:
            raise AudioError("prompt audio yields no speech tokens")
        return speech_tokens[:num_tokens], embedding, np.ascontiguousarray(mel[: ratio * num_tokens])

    def warm_up(self) -> None:
        """One prompt through both models (a second of a quiet tone), so that a first request does not pay their
        lazy setup (device context, kernel choice, ONNX Runtime's first-run allocations)."""
        t = np.arange(SAMPLE_RATE, dtype=np.float32) / SAMPLE_RATE
        self.audio_features(0.1 * np.sin(2 * np.pi * 150 * t), SAMPLE_RATE)

    def source_speech_tokens(self, wav_bytes: bytes, max_seconds: float) -> tuple[np.ndarray, float]:
        """Voice conversion's source recording -> (its speech tokens int32 [T], its seconds), as upstream's
        frontend_vc (the speech tokenizer only: the voice comes from the target's prompt). Raises AudioError, and
        TooLargeError (413) over max_seconds."""
        wav, sr = decode_audio(wav_bytes, max_seconds, name="source audio", too_long=TooLargeError)
        if len(wav) < MIN_PROMPT_SECONDS * sr:
            raise AudioError(f"source audio is {len(wav) / sr:.2f} s; it must be at least {MIN_PROMPT_SECONDS} s")
        tokens = self.speech_tokenizer(whisper_log_mel(resample(wav, sr, SAMPLE_RATE), n_mels=128).numpy())
        if len(tokens) == 0:
            raise AudioError("source audio yields no speech tokens")
        return np.asarray(tokens, dtype=np.int32), len(wav) / sr

    def mel_frames(self, wav24k: np.ndarray) -> np.ndarray:
        """[T] audio at cfg.feat.sampling_rate -> [frames, num_mels] float32."""
        mel = prompt_mel(torch.from_numpy(wav24k)[None], self.cfg.feat)  # (1, num_mels, frames)
        return mel[0].T.numpy().astype(np.float32)
