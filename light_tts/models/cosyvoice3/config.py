"""CosyVoice3's configs (the flow with a DiT estimator, the causal HiFT) and the reader of cosyvoice3.yaml.

What upstream hard-codes in its classes rather than the yaml is set here: the speech ids of CosyVoice3LM (200 special
rows after the 6561 speech tokens: sos, eos, task_id, fill, ...; every one stops a decode; before min_len only sos is
masked), the 10 flow steps, the speech tokenizer file, and <|endofprompt|>'s text id (151646 in the released
tokenizer; read from the tokenizer files here, since a random model's tokenizer has another base vocabulary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from light_tts.model_config import (
    CFMConfig,
    F0PredictorConfig,
    HiFTConfig,
    MinLenRule,
    ModelConfig,
    SpeechIds,
    TokenFlowConfig,
)
from light_tts.model_dir import (
    TOKENIZER_DIR,
    Section,
    cfm_sections,
    open_yaml,
    read_frontend,
    read_hift,
    read_llm,
    read_mel,
)
from light_tts.text_tokens import COSYVOICE3_SPECIAL_TOKENS

YAML_NAME = "cosyvoice3.yaml"
SPEECH_TOKENIZER = "speech_tokenizer_v3.onnx"
NUM_SPECIAL_IDS = 200  # llm_decoder / speech_embedding rows after the speech tokens
END_OF_PROMPT = "<|endofprompt|>"
RELEASED_END_OF_PROMPT_ID = 151646  # upstream's hard-coded id (the released tokenizer gives it this id)


def speech_ids(speech_token_size: int) -> SpeechIds:
    """CosyVoice3LM: sos, eos, task_id, fill are the first 4 of 200 speech rows after the tokens; all 200 stop."""
    n = speech_token_size
    return SpeechIds(
        num_rows=n + NUM_SPECIAL_IDS,
        eos=n + 1,
        fill=n + 3,
        stop_ids=tuple(range(n, n + NUM_SPECIAL_IDS)),
        sos_row=n,
        task_row=n + 2,
        decoder_bias=False,
        min_len=MinLenRule(masked_id=n),
    )


@dataclass(frozen=True)
class DiTConfig:
    """The CFM's DiT estimator (flow/DiT/dit.py)."""

    dim: int = 1024
    depth: int = 22
    heads: int = 16
    dim_head: int = 64
    ff_mult: int = 2
    mel_dim: int = 80
    mu_dim: int = 80
    spk_dim: int = 80
    out_channels: int = 80
    static_chunk_size: int = 50  # frames of one attention block (streaming: block-causal from frame 0)


@dataclass(frozen=True)
class DiTFlowConfig(TokenFlowConfig):
    """CausalMaskedDiffWithDiT: token embedding, pre-lookahead layer, x2 repeat, CFM with a DiT."""

    input_size: int = 80
    pre_lookahead_channels: int = 1024
    cfm: CFMConfig = field(default_factory=CFMConfig)
    estimator: DiTConfig = field(default_factory=DiTConfig)


@dataclass(frozen=True)
class CausalHiFTConfig(HiFTConfig):
    """CausalHiFTGenerator: HiFTGenerator's parameters plus conv_pre's right context."""

    conv_pre_look_right: int = 4


def end_of_prompt_id(token_dir: Path) -> int:
    """<|endofprompt|>'s id once the CosyVoice3 special tokens are added to the tokenizer files in `token_dir`: the
    next id after the files' own tokens (vocab.json and the added tokens of tokenizer_config.json), less the ones of
    upstream's list the files already have (<|im_start|>, <|im_end|>). Upstream's 151646 without tokenizer files
    (a parity fixture)."""
    vocab_path, config_path = token_dir / "vocab.json", token_dir / "tokenizer_config.json"
    if not vocab_path.is_file():
        return RELEASED_END_OF_PROMPT_ID
    known = json.loads(vocab_path.read_text(encoding="utf-8"))
    if config_path.is_file():
        added = json.loads(config_path.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        known.update({entry["content"]: int(i) for i, entry in added.items()})
    next_id = max(known.values()) + 1
    for token in COSYVOICE3_SPECIAL_TOKENS:
        if token == END_OF_PROMPT:
            return known.get(token, next_id)
        if token not in known:
            next_id += 1
    raise AssertionError("unreachable: the special tokens include <|endofprompt|>")


def _read_flow(flow: Section) -> DiTFlowConfig:
    dec, cfm_params, est = cfm_sections(flow)
    pre = flow.sub("pre_lookahead_layer")
    return DiTFlowConfig(
        **flow.fields(DiTFlowConfig),
        pre_lookahead_channels=int(pre.get("channels")),
        cfm=CFMConfig(**dec.fields(CFMConfig), **cfm_params.fields(CFMConfig)),
        estimator=DiTConfig(**est.fields(DiTConfig)),
    )


def load_model_config(model_dir: str | Path) -> ModelConfig:
    """Reads cosyvoice3.yaml and CosyVoice-BlankEN/config.json; errors name the file and the key."""
    model_dir, top = open_yaml(model_dir, YAML_NAME)
    llm = top.sub("llm")
    speech_token_size = int(llm.get("speech_token_size"))
    return ModelConfig(
        model_dir=model_dir,
        family="cosyvoice3",
        **top.fields(ModelConfig),
        llm=read_llm(top, model_dir, speech_ids(speech_token_size), end_of_prompt_id(model_dir / TOKENIZER_DIR)),
        flow=_read_flow(top.sub("flow")),
        hift=read_hift(top, CausalHiFTConfig, F0PredictorConfig),
        feat=read_mel(top),
        frontend=read_frontend(top, SPEECH_TOKENIZER),
    )
