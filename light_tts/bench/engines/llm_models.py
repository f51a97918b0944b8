"""What the LLM benchmark needs of a model family: its engine spec and weights, requests of a given shape, and a
float32 reference that scores a request's ids (the log-prob check).

CosyVoice2 (and CosyVoice3 from a directory): the released dimensions in memory (no directory needed) or a directory;
requests of random text and
prompt speech. Orpheus: a directory (make_model --family orpheus --size full); requests of random text ids in the
served prompt, generating freely over the whole vocabulary (as served: the sampler's real cost), never stopping
early in practice (a random model draws the stop id about once in 157k).
"""

from __future__ import annotations

from pathlib import Path

import torch

from light_tts.llm.request import LLMRequest


class CosyVoiceBench:
    def __init__(self, model_dir: Path | None, device: str):
        from light_tts.families import family_named, family_of
        from light_tts.model_config import ModelConfig
        from light_tts.models.speech_lm import SpeechLM

        self.device = device
        if model_dir is not None:  # CosyVoice2 or CosyVoice3: the family reads its config and ids
            self.cfg = family_of(model_dir).load_model_config(model_dir)
            self.state_dict = torch.load(self.cfg.path("llm.pt"), map_location=device, weights_only=True)
        else:
            self.cfg = ModelConfig(model_dir=Path("random"))  # the released dimensions (model_config defaults)
            torch.manual_seed(0)
            with torch.device(device):
                self.state_dict = SpeechLM(self.cfg.llm).state_dict()
        self.spec = family_named(self.cfg.family).llm_spec(self.cfg)
        self.num_text_ids = self.cfg.llm.qwen.vocab_size

    def make_request(self, req_id: str, prompt_len: int, gen_len: int, gen: torch.Generator, **kw) -> LLMRequest:
        """prompt_len inputs (1/3 text, the rest prompt speech), exactly gen_len tokens generated."""
        num_text = max(1, prompt_len // 3 - 2)
        num_speech = prompt_len - num_text - 2
        text = torch.randint(0, self.num_text_ids, (num_text,), generator=gen).tolist()
        speech = torch.randint(0, 6561, (num_speech,), generator=gen).tolist()
        return LLMRequest(
            req_id,
            text,
            [],
            speech,
            seed=int(torch.randint(0, 2**31, (1,), generator=gen)),
            min_len=gen_len,
            max_len=gen_len,
            **kw,
        )

    def reference(self):
        from light_tts.models.speech_lm import SpeechLM

        ref = SpeechLM(self.cfg.llm).to(self.device)
        ref.load_state_dict(self.state_dict)
        return ref.eval().requires_grad_(False)

    @torch.inference_mode()
    def reference_logprobs(self, ref, req: LLMRequest, tokens: list[int]) -> list[torch.Tensor]:
        """The reference's log-probs before each generated id and after the last, fed the same ids."""
        cache = ref.new_cache()
        embeds = ref.build_prefill_embeds(
            *(
                torch.tensor(x, device=self.device)
                for x in (req.text_token_ids, req.prompt_text_token_ids, req.prompt_speech_token_ids)
            )
        )
        out = []
        for token in tokens + [None]:
            out.append(ref.forward_step(embeds, cache))
            if token is not None:
                embeds = ref.embed_speech(torch.tensor([token], device=self.device))
        return out


class OrpheusBench:
    def __init__(self, model_dir: Path, device: str):
        from light_tts.families.orpheus import llm_spec, load_model_config
        from light_tts.models.weights import read_safetensors

        self.device = device
        self.cfg = load_model_config(model_dir)
        self.spec = llm_spec(self.cfg)
        self.state_dict = read_safetensors(self.cfg.model_dir)
        self.tokens = self.cfg.tokens

    def make_request(self, req_id: str, prompt_len: int, gen_len: int, gen: torch.Generator, **kw) -> LLMRequest:
        """The served prompt around prompt_len - 8 random text ids; gen_len ids sampled freely."""
        from light_tts.models.orpheus.lm import build_prompt

        text = torch.randint(0, self.tokens.bos, (max(1, prompt_len - 8),), generator=gen).tolist()
        return LLMRequest(
            req_id,
            build_prompt(self.tokens, text),
            seed=int(torch.randint(0, 2**31, (1,), generator=gen)),
            max_len=gen_len,
            **kw,
        )

    def reference(self):
        from light_tts.models.orpheus.lm import load_causal_lm

        return load_causal_lm(self.cfg.body, self.state_dict).to(self.device)

    @torch.inference_mode()
    def reference_logprobs(self, ref, req: LLMRequest, tokens: list[int]) -> list[torch.Tensor]:
        ids = torch.tensor([req.text_token_ids + tokens], device=self.device)
        logits = ref.lm_head(ref.model(ref.model.embed_tokens(ids)))[0].float()
        lo, hi = self.spec.arch.logit_range  # the ids the engine scores (audio-only: the audio ids and the stops)
        return list(logits[len(req.text_token_ids) - 1 :, lo:hi].log_softmax(dim=-1))


def bench_model(model_dir: Path | None, device: str):
    """The family's benchmark adapter (CosyVoice2's released dimensions without a directory)."""
    if model_dir is None:
        return CosyVoiceBench(None, device)
    from light_tts.families import detect_family

    adapters = {"cosyvoice2": CosyVoiceBench, "cosyvoice3": CosyVoiceBench, "orpheus": OrpheusBench}
    return adapters[detect_family(model_dir).name](model_dir, device)
