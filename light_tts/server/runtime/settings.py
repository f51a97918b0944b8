"""Every process's settings and every shared-memory size, derived once from ServerConfig and the model's config.

The launcher builds one ServerSettings (build_settings) and hands the same object to every process. Nothing here
has a default of its own: a value is either a ServerConfig flag or a fact read from the model directory (sample
rate, token rate, speaker-embedding size, mel bins), so a limit or a size is written in exactly one place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from light_tts.families.base import ModelFacts
from light_tts.server.runtime.auth_keys import AuthSettings
from light_tts.server.runtime.config import ServerConfig
from light_tts.server.runtime.model_set import (
    ModelEntry,
    check_compatible,
    make_entry,
    model_index,
    parse_model_specs,
    prompt_models,
)
from light_tts.server.runtime.placement import Topology, plan

if TYPE_CHECKING:
    from light_tts.llm.config import EngineConfig

AUDIO_RING_SECONDS = 60  # audio a slot's ring holds; a reader further behind gets its audio inline

# --decode_hot_path per_op: every variant of docs/decode-engine.md's hot path off (EngineLimits; None is "on a GPU")
PER_OP_HOT_PATH = {"fused_flow": False, "hift_half": False, "keyed_noise": False, "overlap_hift": False}
HOT_PATHS = {"auto": {}, "per_op": PER_OP_HOT_PATH, "fused": {"fused_flow": True}}  # --decode_hot_path


@dataclass(frozen=True)
class VoiceLimits:
    """Built from ServerConfig at startup (ServerSettings.voice_limits; no defaults here, so no second copy of the
    server's limits). The audio's length limit is the encode process's, which decodes it."""

    max_voices: int
    max_upload_bytes: int
    max_text_chars: int


@dataclass(frozen=True)
class ShmSizes:
    """Shapes of the request slots (shm.RequestSlots) and the voice cache (voice_cache.VoiceCache)."""

    num_slots: int
    text_bytes: int  # UTF-8 of the longest text: 4 bytes per character at most
    wav_bytes: int  # the largest prompt upload
    prompt_text_tokens: int  # a text never has more tokens than characters
    prompt_speech_tokens: int  # of the longest prompt, plus one second of slack
    token_mel_ratio: int
    embedding_dim: int
    num_mels: int
    audio_ring_samples: int
    cache_capacity: int

    @property
    def prompt_mel_frames(self) -> int:
        return self.token_mel_ratio * self.prompt_speech_tokens


FORM_OVERHEAD_BYTES = 64 << 10  # a form's part headers and small fields on top of its file and texts


@dataclass(frozen=True)
class ServerSettings:
    cfg: ServerConfig
    model: ModelFacts
    shm: ShmSizes
    auth: AuthSettings  # the keys of --api_key and --api_key_file (read once, at startup)
    data_dir: str  # saved voices: --data_dir, or the XDG data directory
    models: tuple[ModelEntry, ...]  # every model served; `model` is the first's facts (the default model)
    topology: Topology  # which process serves which model where (placement.plan)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def model_of(self, stage: str, rank: int) -> ModelEntry:
        """The model an LLM replica serves, or the first of a decode process's group (their flow and HiFT are the
        same files)."""
        index = self.model_index(self.topology.plan_of(stage, rank).models[0])
        assert index is not None  # the topology is planned from these models
        return self.models[index]

    def model_index(self, name: str) -> int | None:
        """Index of tts_model_name `name` ("default": the first model), None for an unknown name."""
        return model_index(self.models, name)

    def ignored_flags(self) -> list[str]:
        """Startup notes for codec flags set to other than their default that no served model's codec reads (an
        Orpheus-only server: CosyVoice's flow and hop flags)."""
        from light_tts.families import family_named, family_names

        used = {flag for m in self.models for flag in family_named(m.family).decode_flags}
        every = {flag for name in family_names() for flag in family_named(name).decode_flags}
        defaults, families = ServerConfig(), ", ".join(sorted({m.family for m in self.models}))
        return [
            f"--{flag} has no effect: no served model's codec reads it ({families})"
            for flag in sorted(every - used)
            if getattr(self.cfg, flag) != getattr(defaults, flag)
        ]

    def voice_limits(self) -> VoiceLimits:
        """The saved voices' limits: --max_voices, and the limits every prompt upload has (the audio's length,
        --max_prompt_seconds, is checked by the encode process as for any prompt)."""
        c = self.cfg
        return VoiceLimits(
            max_voices=c.max_voices, max_upload_bytes=c.max_prompt_wav_bytes, max_text_chars=c.max_text_chars
        )

    @property
    def max_vc_source_seconds(self) -> float:
        """The longest voice-conversion source: --max_vc_source_seconds, and no more speech tokens than one
        sentence may have (--max_speech_tokens, the decode engine's page budget of a request)."""
        return min(self.cfg.max_vc_source_seconds, self.cfg.max_speech_tokens / self.model.token_rate)

    @property
    def max_body_bytes(self) -> int:
        """The largest request body any endpoint takes (one bound, so a client meets the same 413 everywhere):
        a prompt upload of --max_prompt_wav_bytes, then the larger of three texts of --max_text_chars at up to 4
        UTF-8 bytes a character (tts_text, prompt_text, instruct_text) and voice conversion's source recording
        (of --max_prompt_wav_bytes too), and the form's own headers and small fields."""
        c = self.cfg
        return c.max_prompt_wav_bytes + max(12 * c.max_text_chars, c.max_prompt_wav_bytes) + FORM_OVERHEAD_BYTES

    @property
    def max_fixed_speech_tokens(self) -> int:
        """Largest `fixed_speech_tokens` a request may ask for: one engine request holds at most
        --max_req_total_len tokens (the LLM checks the exact fit, prompt included)."""
        return min(self.cfg.max_req_total_len, self.cfg.max_speech_tokens)

    def sentence_speech_tokens(self, facts: ModelFacts, num_text_tokens: int | None, fixed: int | None) -> int:
        """The most speech tokens a sentence of a model may get (the LLM's max_len, the decode engine's page
        budget): the fixed length if asked, else the model's own bound (Orpheus' max_new_tokens) or upstream's 20
        per text token (bistream: text still unknown), within --max_speech_tokens."""
        if fixed is not None:
            return fixed
        bound = self.cfg.max_speech_tokens
        if facts.max_sentence_tokens:
            return min(bound, facts.max_sentence_tokens)
        return bound if num_text_tokens is None else min(bound, 20 * num_text_tokens)

    def first_chunk_tokens(self, facts: ModelFacts, num_prompt_tokens: int) -> int:
        """Speech tokens a stream's first audio chunk needs (token2wav.ChunkSchedule): its hop (--first_hop_tokens,
        else a chunk plus the pad that aligns prompt and hop to the chunk grid) and the flow's lookahead; a codec with
        a fixed first window (Orpheus') says how many."""
        if facts.fixed_first_audio_tokens:
            return facts.fixed_first_audio_tokens
        hop = self.cfg.first_hop_tokens or facts.chunk_tokens + -num_prompt_tokens % facts.chunk_tokens
        return hop + facts.pre_lookahead

    def prompt_device(self) -> str | None:
        """Where the encode processes run the prompt models as torch modules (--prompt_models), None for ONNX
        Runtime: the first LLM's device (a GPU; with `torch`, the CPU too)."""
        mode, device = self.cfg.prompt_models, self.topology.compute_device("llm", 0)
        if mode == "onnx" or (mode == "auto" and not device.startswith("cuda")):
            return None
        return device

    def llm_dtype(self, device: str) -> str:
        """--data_type on a GPU; float32 on the CPU, where half precision is slow or missing."""
        return self.cfg.data_type if device != "cpu" else "float32"

    def decode_dtype(self, device: str) -> str:
        return self.cfg.decode_data_type if device != "cpu" else "float32"

    def llm_small_batch_rows(self, facts: ModelFacts, device: str) -> int:
        """--llm_small_batch_rows, or at -1 the model's setting on a GPU and 0 on the CPU (there the path runs the
        kernels' torch references: nothing to gain)."""
        rows = self.cfg.llm_small_batch_rows
        if rows >= 0:
            return rows
        return facts.small_batch_rows if device != "cpu" else 0

    def llm_engine_config(self, device: str, rank: int = 0) -> EngineConfig:
        """The config of llm `rank`'s engine, every field from a flag, its model or the topology (a new
        EngineConfig field fails here until mapped)."""
        from light_tts.llm.config import EngineConfig

        c, m = self.cfg, self.model_of("llm", rank).facts
        values: dict[str, Any] = {
            "max_total_token_num": c.max_total_token_num,
            "batch_max_tokens": c.batch_max_tokens or c.max_req_total_len,
            "running_max_req_size": c.running_max_req_size,  # one engine request per server request at a time
            "graph_max_batch_size": c.graph_max_batch_size or c.running_max_req_size,
            "disable_cudagraph": c.disable_cudagraph,
            "prefill_graph_max_tokens": c.prefill_graph_max_tokens,
            "data_type": self.llm_dtype(device),
            "router_max_wait_tokens": c.router_max_wait_tokens,
            "max_req_total_len": c.max_req_total_len,
            "enable_prefix_cache": not c.disable_prefix_cache,
            "kv_cache_mem_fraction": self.topology.plan_of("llm", rank).memory_share,
            # a stream's first audio needs its first hop, the prompt's alignment pad (< a chunk) and the lookahead
            # (a codec with a fixed first window, Orpheus', says how many)
            "first_hop_tokens": m.fixed_first_audio_tokens
            or (c.first_hop_tokens or 2 * m.chunk_tokens - 1) + m.pre_lookahead,
            "ahead_tokens": int(c.llm_ahead_seconds * m.token_rate),
            "tokens_per_second": m.token_rate,
            "quantization": c.quantization,
            "kv_cache_dtype": c.kv_cache_dtype,
            "small_batch_rows": self.llm_small_batch_rows(m, device),
        }
        unmapped = {f.name for f in fields(EngineConfig)} - set(values)
        if unmapped:
            raise TypeError(f"EngineConfig fields without a server flag: {sorted(unmapped)}")
        return EngineConfig(**values)

    def decode_engine_kwargs(self, device: str, rank: int = 0) -> dict[str, Any]:
        """Keyword arguments of DecodeEngine(model_cfg, **kwargs) for decode process `rank` on `device`."""
        import torch

        from light_tts.decode.engine_setup import EngineLimits
        from light_tts.token2wav import HopPolicy

        c = self.cfg
        limits = EngineLimits(
            max_stream_tokens=c.max_speech_tokens,
            max_prompt_tokens=self.shm.prompt_speech_tokens,
            max_pass_tokens=max(1024, min(8192, 32 * c.decode_max_batch_size)),
            max_streams=c.decode_max_streams,
            mem_fraction=self.topology.plan_of("decode", rank).memory_share,
            deadline_margin_s=c.deadline_margin_s,
            first_hop_tokens=c.first_hop_tokens,
            context_window_pages=math.ceil(c.flow_context_window),
            # streams are admitted within real-time capacity on a GPU; a CPU host is for trying, not real time
            admission_wait_s=c.admission_wait_s,
            realtime_admission=device != "cpu",
            reservation=c.decode_reservation,
            headroom=c.decode_headroom,
            preempt_interval_s=c.preempt_interval_s,
            num_pages=c.decode_pool_pages,
            step_target_s=c.decode_step_target_s,
            lane_step_s=0.0 if c.latency_lane == "short_steps" else None,
            kv_dtype=None if c.flow_cache_dtype == "auto" or device == "cpu" else c.flow_cache_dtype,
            **HOT_PATHS[c.decode_hot_path],
        )
        return {
            "device": device,
            "max_batch_size": c.decode_max_batch_size,
            "hop_policy": HopPolicy(c.hop_policy),
            "dtype": getattr(torch, self.decode_dtype(device)),
            "use_cuda_graph": not c.disable_cudagraph,
            "limits": limits,
            "snac_kernels": c.snac_kernels,
        }


def build_settings(
    cfg: ServerConfig, model_cfgs: Any, names: Sequence[str] | None = None, num_gpus: int = 0
) -> ServerSettings:
    """Settings of a server of one model (a config its family read) or several (a list; the first is the default);
    `names` are their tts_model_names (default: the folders' names). Prompt features are sized for the models
    that take prompt audio (none: empty prompt arrays)."""
    configs = list(model_cfgs) if isinstance(model_cfgs, (list, tuple)) else [model_cfgs]
    names = names or [Path(m.model_dir).name for m in configs]
    models = tuple(make_entry(name, m) for name, m in zip(names, configs))
    check_compatible(models)
    sample_rate = max(m.facts.sample_rate for m in models)
    with_prompt = [m.facts for m in prompt_models(models)]
    token_rate = math.ceil(max((f.token_rate for f in with_prompt), default=0))
    layout = with_prompt[0].prompt_layout() if with_prompt else (0, 0, 0)
    shm = ShmSizes(
        num_slots=cfg.running_max_req_size,
        text_bytes=4 * cfg.max_text_chars,
        wav_bytes=cfg.max_prompt_wav_bytes,
        prompt_text_tokens=cfg.max_text_chars,
        prompt_speech_tokens=int(cfg.max_prompt_seconds * token_rate) + token_rate,
        embedding_dim=layout[0],
        num_mels=layout[1],
        token_mel_ratio=layout[2],
        audio_ring_samples=AUDIO_RING_SECONDS * sample_rate,
        cache_capacity=cfg.cache_capacity,
    )
    auth = AuthSettings.from_values(cfg.api_key or (), cfg.api_key_file, cfg.metrics_public)
    return ServerSettings(
        cfg, models[0].facts, shm, auth, cfg.data_dir or default_data_dir(), models, plan(cfg, models, num_gpus)
    )


def default_data_dir() -> str:
    """The XDG data directory, as the tiny model's cache uses XDG_CACHE_HOME."""
    return str(Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "lighttts")


def load_settings(cfg: ServerConfig, num_gpus: int | None = None) -> ServerSettings:
    """build_settings with the model configs read from every --model_dir (by its family), planned for the GPUs of
    this host."""
    from light_tts.families import family_of

    specs = parse_model_specs(cfg.model_dir or ())
    return build_settings(
        cfg,
        [family_of(path).load_model_config(path) for _, path in specs],
        [name for name, _ in specs],
        count_gpus(cfg) if num_gpus is None else num_gpus,
    )


def count_gpus(cfg: ServerConfig) -> int:
    """GPUs the processes are placed on: none with --device cpu or without an NVIDIA driver (torch is imported
    only when there may be one)."""
    if cfg.device == "cpu" or not Path("/proc/driver/nvidia").exists():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
