"""CosyVoice2-0.5B (`cosyvoice2.yaml`): the Qwen2 speech LM, the conformer + CFM flow and HiFT.

The first family: its modules are in models/cosyvoice2/, its engines are the shared ones (llm/, decode/) as they
were written for it, so each method here names existing code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from light_tts.families.base import CROSS_LINGUAL, INSTRUCT, ZERO_SHOT, LLMPrompt, ModelFacts, ModelFamily
from light_tts.model_dir import SPEECH_TOKENIZER, TOKENIZER_DIR, YAML_NAME
from light_tts.text_tokens import COSYVOICE2_SPECIAL_TOKENS

if TYPE_CHECKING:
    from light_tts.llm.spec import LLMSpec

END_OF_PROMPT = "<|endofprompt|>"  # a special token of the tokenizer: where an instruction ends
# the tokenizer's control tags a text may carry (each one token id): vocal events and emphasis
CONTROL_TAGS = tuple(t for t in COSYVOICE2_SPECIAL_TOKENS if not t.startswith("<|"))


class CosyVoice2Family(ModelFamily):
    name = "cosyvoice2"
    marker = YAML_NAME
    speech_tokenizer = SPEECH_TOKENIZER
    flow_files = ("flow.pt", "hift.pt")
    CONTROL_TAGS = CONTROL_TAGS
    decode_flags = (
        "decode_max_batch_size",
        "decode_max_streams",
        "decode_mem_fraction",
        "flow_cache_dtype",
        "deadline_margin_s",
        "decode_reservation",
        "admission_wait_s",
        "decode_headroom",
        "preempt_interval_s",
        "decode_pool_pages",
        "first_hop_tokens",
        "flow_context_window",
        "hop_policy",
        "decode_data_type",
        "decode_hot_path",
    )

    @property
    def frontend_files(self) -> tuple[str, ...]:
        return (self.speech_tokenizer, "campplus.onnx", TOKENIZER_DIR)

    def load_model_config(self, model_dir):
        from light_tts.model_dir import load_model_config

        return load_model_config(model_dir)

    def check_complete(self, model_dir) -> None:
        from light_tts.model_dir import check_complete

        check_complete(model_dir, self.marker, ("campplus.onnx", self.speech_tokenizer))

    def frontend_salt(self, cfg) -> str:
        """The prompt mel's parameters (CosyVoice3's 12 kHz fmax), the tokenizer's special tokens, the mel ratio."""
        return repr((cfg.feat, cfg.frontend, cfg.token_mel_ratio))

    def llm_weight_files(self, model_dir) -> list[Path]:
        return [Path(model_dir) / "llm.pt"]

    def model_facts(self, cfg) -> ModelFacts:
        return ModelFacts(
            sample_rate=cfg.sample_rate,
            token_rate=cfg.token_frame_rate,
            token_mel_ratio=cfg.token_mel_ratio,
            embedding_dim=cfg.flow.spk_embed_dim,
            num_mels=cfg.feat.num_mels,
            chunk_tokens=cfg.chunk_size,
            pre_lookahead=cfg.flow.pre_lookahead_len,
            small_batch_rows=2,  # Qwen2-0.5B on an H100: batch 1 0.87 vs 1.49 ms in fp8, 0.83 vs 1.09 in bf16
        )

    def llm_prompt(self, mode: str, transcript: str = "", instruction: str = "") -> LLMPrompt:
        """The LLM's prompt in `mode`, as upstream's cli/frontend.py builds it: zero-shot (frontend_zero_shot) gives
        the transcript and the prompt's speech tokens; instruct (frontend_instruct2) the instruction ending with
        <|endofprompt|> (added when missing) in the transcript's place and no prompt speech; cross-lingual
        (frontend_cross_lingual) neither. Voice conversion has no LLM."""
        self.check_mode(mode)
        if mode == INSTRUCT:
            text = instruction if instruction.endswith(END_OF_PROMPT) else instruction + END_OF_PROMPT
            return LLMPrompt(text, uses_prompt_speech=False)
        if mode == CROSS_LINGUAL:
            return LLMPrompt("", uses_prompt_speech=False)
        assert mode == ZERO_SHOT
        return LLMPrompt(transcript, uses_prompt_speech=True)

    def llm_spec(self, cfg) -> LLMSpec:
        """The LLM engine's view of the speech LM: Qwen2 body, one embedding table over speech, special and text ids
        (request.TokenLayout), the speech head (biased or not: SpeechIds), RAS sampling with the MinLenRule (and no
        stop at all before a fixed length), llm.pt."""
        from light_tts.llm.request import TokenLayout
        from light_tts.llm.sampler import Sampler
        from light_tts.llm.spec import LLMSpec, LMArch
        from light_tts.llm.weights import engine_state_dict
        from light_tts.models.weights import read_state_dict

        layout = TokenLayout.from_config(cfg.llm)
        body, ids = cfg.llm.qwen, cfg.llm.ids
        rule = ids.min_len
        reject_from = cfg.llm.num_speech_rows if rule.reject_from is None else rule.reject_from
        return LLMSpec(
            arch=LMArch(body, layout.num_embeddings, cfg.llm.num_speech_rows, head_bias=ids.decoder_bias),
            layout=layout,
            make_sampler=lambda num_rows, device: Sampler(
                cfg.llm.sampling, reject_from, rule.masked_id, min(ids.stop_ids)
            ),
            engine_weights=lambda sd: engine_state_dict(
                sd, body.num_hidden_layers, ids.sos_row is None, ids.decoder_bias
            ),
            read_weights=lambda: read_state_dict(cfg.path("llm.pt")),
        )

    def speech_lm(self, cfg, device: str = "cpu"):
        from light_tts.models.speech_lm import SpeechLM

        return SpeechLM.from_checkpoint(cfg.llm, cfg.path("llm.pt")).to(device).eval()

    def token2wav(self, cfg, device: str = "cpu"):
        from light_tts.token2wav import Token2Wav

        return Token2Wav(cfg, device)

    def decode_engine(self, cfg, snac_kernels: str = "fused", **kwargs):
        """(snac_kernels is Orpheus's codec flag: not read here.)"""
        from light_tts.decode.engine import DecodeEngine

        return DecodeEngine(cfg, **kwargs)


FAMILY = CosyVoice2Family()
llm_spec = FAMILY.llm_spec  # the engine tests and benchmarks build their engine from it
