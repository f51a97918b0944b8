"""Orpheus-3B (canopylabs/orpheus-3b-0.1-ft + SNAC 24 kHz): a Llama-3.2-3B that speaks SNAC codes as tokens.

Recognised by its config.json: a LlamaForCausalLM whose vocabulary holds the 7 x 4096 audio ids
(models/orpheus/config.py reads the rest from the released files). The LLM is a plain causal LM fed the prompt
the family builds (no prompt audio: voices are names in the prompt), sampled with temperature, top-p and a
repetition penalty; the codec turns 7-token frames into SNAC codes and decodes them in windows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from light_tts.families.base import ModelFacts, ModelFamily
from light_tts.models.orpheus.config import CONFIG_NAME, SNAC_DIR, TOKENIZER_NAME, OrpheusConfig, load_model_config

if TYPE_CHECKING:
    from light_tts.llm.spec import LLMSpec

NAME = "orpheus"
MARKER = CONFIG_NAME

__all__ = ["NAME", "MARKER", "FAMILY", "check_complete", "load_model_config", "llm_spec"]


def check_complete(model_dir: str | Path) -> None:
    """ModelDirError listing every file the server needs but the directory lacks."""
    from light_tts.errors import ModelDirError

    model_dir = Path(model_dir)
    needed = [CONFIG_NAME, TOKENIZER_NAME, f"{SNAC_DIR}/{CONFIG_NAME}", f"{SNAC_DIR}/pytorch_model.bin"]
    missing = [name for name in needed if not (model_dir / name).is_file()]
    if not (model_dir / "model.safetensors").is_file() and not (model_dir / "model.safetensors.index.json").is_file():
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    if missing:
        raise ModelDirError(f"incomplete Orpheus model directory {model_dir}: missing {', '.join(missing)}")


def prompt_layout(cfg: OrpheusConfig):
    from light_tts.llm.prompt_layout import PromptLayout

    t = cfg.tokens
    stops = {t.end_of_speech}
    if cfg.audio_only:  # the control ids between end-of-speech and the audio ids end an utterance as it does
        stops |= set(range(t.end_of_speech + 1, t.first_audio))
    return PromptLayout(
        vocab_size=cfg.body.vocab_size,
        stop_ids=frozenset(stops),
        first_audio_id=t.first_audio,
        codes_per_position=t.codebook_size,
        frame_len=t.frame_len,
        default_max_len=cfg.max_new_tokens,
        audio_only=cfg.audio_only,
    )


def llm_spec(cfg: OrpheusConfig) -> LLMSpec:
    """The LLM engine's view: the Llama body, the vocabulary as the id space, the (tied) LM head, nucleus sampling
    with a repetition penalty, the safetensors checkpoint."""
    from light_tts.llm.nucleus_sampler import NucleusSampler
    from light_tts.llm.spec import LLMSpec, LMArch
    from light_tts.llm.weights import causal_lm_state_dict
    from light_tts.models.weights import read_safetensors

    body = cfg.body
    layout = prompt_layout(cfg)
    return LLMSpec(
        arch=LMArch(
            body,
            body.vocab_size,
            body.vocab_size,
            head_bias=False,
            tie_head=body.tie_word_embeddings,
            logit_range=layout.sampled_range(),  # audio-only: 28,680 of the 156,940 rows
        ),
        layout=layout,
        make_sampler=lambda num_rows, device: NucleusSampler(cfg.sampling, layout, num_rows, device),
        engine_weights=lambda sd: causal_lm_state_dict(
            sd, body.num_hidden_layers, body.attention_bias, body.tie_word_embeddings
        ),
        read_weights=lambda: read_safetensors(cfg.model_dir),
    )


class OrpheusFamily(ModelFamily):
    """The registry's view of this module. Orpheus takes no prompt audio (voices are names in its prompt) and has
    no CosyVoice modes; its frontend and codec are frontend/orpheus_frontend.py and decode/snac/snac_engine.py."""

    name = NAME
    marker = MARKER
    modes = ()
    flow_files = (f"{SNAC_DIR}/{CONFIG_NAME}", f"{SNAC_DIR}/pytorch_model.bin")
    frontend_files = (TOKENIZER_NAME,)
    decode_flags = ("decode_max_batch_size", "deadline_margin_s", "snac_kernels")  # see decode_engine

    def load_model_config(self, model_dir):
        return load_model_config(model_dir)

    def check_complete(self, model_dir) -> None:
        check_complete(model_dir)

    def frontend_salt(self, cfg: OrpheusConfig) -> str:
        """The ids, the voices and the bos layout: two directories with one tokenizer.json but other voices
        (lighttts.json) need frontends of their own."""
        return repr((cfg.tokens, cfg.voices, cfg.double_bos))

    def llm_weight_files(self, model_dir) -> list[Path]:
        from light_tts.model_dir import safetensors_files

        return safetensors_files(Path(model_dir))

    def model_facts(self, cfg: OrpheusConfig) -> ModelFacts:
        """No prompt features; a stream's first audio is its first window (WINDOW frames), a sentence is bounded
        by max_new_tokens (lighttts.json) instead of a multiple of its text."""
        from light_tts.models.orpheus.frames import WINDOW

        frame = cfg.tokens.frame_len
        return ModelFacts(
            sample_rate=cfg.sample_rate,
            token_rate=cfg.tokens_per_second,
            token_mel_ratio=0,
            embedding_dim=0,
            num_mels=0,
            chunk_tokens=frame,
            pre_lookahead=(WINDOW - 2) * frame,
            fixed_first_audio_tokens=WINDOW * frame,
            max_sentence_tokens=cfg.max_new_tokens,
            takes_prompt_audio=False,
            voices=cfg.voices,
        )

    def frontend(
        self,
        cfg: OrpheusConfig,
        max_text_chars: int | None = None,
        max_prompt_seconds: float | None = None,
        prompt_device: str | None = None,
    ):
        """Text and a voice name -> each sentence's prompt ids (no prompt audio, so max_prompt_seconds and
        prompt_device are moot)."""
        from light_tts.frontend.orpheus_frontend import OrpheusFrontend

        return OrpheusFrontend(cfg) if max_text_chars is None else OrpheusFrontend(cfg, max_text_chars=max_text_chars)

    def llm_spec(self, cfg) -> LLMSpec:
        return llm_spec(cfg)

    def decode_engine(
        self,
        cfg: OrpheusConfig,
        device="cpu",
        max_batch_size: int = 64,
        use_cuda_graph: bool = True,
        limits=None,
        hop_policy=None,
        dtype=None,
        snac_kernels: str = "fused",
    ):
        """SNACEngine with the decode processes' batch size, CUDA graphs and deadline margin. It decodes in
        float32, the reference's precision (--decode_data_type is the CosyVoice flow's); CosyVoice's hop policy
        and page-pool limits do not apply (windows are the reference's, a stream holds no pages). snac_kernels
        "fused": the decoder's fused Triton launches on a GPU (the module everywhere else)."""
        from light_tts.decode.snac.snac_engine import SNACEngine

        margin = {} if limits is None else {"deadline_margin_s": limits.deadline_margin_s}
        return SNACEngine(
            cfg,
            device,
            max_batch_size=max_batch_size,
            use_cuda_graph=use_cuda_graph,
            fused=snac_kernels == "fused" and str(device).startswith("cuda"),
            **margin,
        )


FAMILY = OrpheusFamily()
