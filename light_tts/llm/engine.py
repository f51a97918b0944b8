"""LLMEngine: the token LM behind the server's LLM process. add_request / append_text / abort between steps; each
step() schedules one batch, runs it and returns the tokens it produced, request by request. What it runs (network,
id space, sampler, weights) is the family's LLMSpec (spec.py).
"""

from __future__ import annotations

import torch

from light_tts.llm.config import EngineConfig
from light_tts.llm.model_runner import ModelRunner
from light_tts.llm.request import LLMRequest, Sequence, TokenOutput
from light_tts.llm.scheduler import Scheduler, SchedulerConfig
from light_tts.llm.spec import LLMSpec


class LLMEngine:
    def __init__(
        self,
        spec: LLMSpec,
        engine_cfg: EngineConfig,
        device: str | torch.device,
        state_dict: dict[str, torch.Tensor] | None = None,
    ):
        """state_dict: the released state dict already in memory (default: spec.read_weights())."""
        self.cfg = engine_cfg
        self.layout = spec.layout
        self.runner = ModelRunner(spec, engine_cfg, torch.device(device), state_dict)
        self.scheduler = Scheduler(
            SchedulerConfig(
                num_kv_slots=self.runner.num_kv_slots,
                max_req_total_len=engine_cfg.max_req_total_len,
                batch_max_tokens=engine_cfg.batch_max_tokens,
                running_max_req_size=engine_cfg.running_max_req_size,
                router_max_wait_tokens=engine_cfg.router_max_wait_tokens,
                enable_prefix_cache=engine_cfg.enable_prefix_cache,
                first_hop_tokens=engine_cfg.first_hop_tokens,
                ahead_tokens=engine_cfg.ahead_tokens,
                tokens_per_second=engine_cfg.tokens_per_second,
            )
        )
        self.num_arrivals = 0
        self.last_batch_size = 0
        self.last_batch_is_prefill = False
        self.num_prefill_tokens = 0  # tokens computed by prefill batches since start (prefix reuse shows here)

    def add_request(self, req: LLMRequest) -> None:
        """Queue a request; a bad one comes back from the next step() as finished with "error:<message>"."""
        seq = Sequence(req, self.layout, self.num_arrivals, self.cfg.max_req_total_len)
        self.num_arrivals += 1
        problem = self.layout.check(req)
        if problem:
            self.scheduler.reject(seq, "error:" + problem)
            return
        self.scheduler.add(seq)

    def append_text(self, req_id: str, text_token_ids: list[int], is_last: bool) -> bool:
        """More text for a bistream request (is_last on the final piece); False (text dropped) if the request has
        already finished or was aborted."""
        problem = self.layout.check_text(text_token_ids)
        if problem:
            return self.scheduler.fail(req_id, "error:" + problem)
        return self.scheduler.append_text(req_id, list(text_token_ids), is_last)

    def abort(self, req_id: str) -> bool:
        """Drop a request and free its KV; no further output is produced for it. False if unknown."""
        return self.scheduler.abort(req_id)

    def abort_running(self) -> list[str]:
        """Abort every running request (after a step raised: those it held) and return their ids; waiting ones stay
        queued, and the engine keeps serving."""
        ids = [seq.req_id for seq in self.scheduler.running]
        for req_id in ids:
            self.abort(req_id)
        return ids

    def take_waits(self) -> list[tuple[str, str]]:
        """(request, why) of each wait for KV or a batch row that began since the last call."""
        return self.scheduler.take_waits()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def release(self) -> None:
        """While idle (nothing in the engine): free the device (--idle_release_s); the kept prompt prefixes go too."""
        if self.scheduler.has_unfinished():
            raise RuntimeError("release with requests in the engine")
        if self.scheduler.prefix_cache is not None:
            self.scheduler.prefix_cache.evict(self.scheduler.prefix_cache.num_cached_slots)
        self.runner.release()

    def reload(self) -> None:
        self.runner.reload()

    def step(self) -> list[TokenOutput]:
        """Run one batch; [] with nothing to run (e.g. every bistream request waits for text)."""
        batch = self.scheduler.schedule()
        if batch is None:
            self.last_batch_size = 0
            return self.scheduler.take_outputs()
        self.last_batch_size, self.last_batch_is_prefill = len(batch.seqs), batch.is_prefill
        if batch.is_prefill:
            self.num_prefill_tokens += sum(s.num_new_tokens for s in batch.seqs)
        token_ids = self.runner.run(batch)
        return self.scheduler.postprocess(batch, token_ids)

    def stats(self) -> dict[str, int]:
        s = self.scheduler
        return {
            "num_running": len(s.running),
            "num_waiting": len(s.waiting),
            "kv_used_tokens": s.allocator.num_used,
            "kv_total_tokens": s.allocator.num_slots,
            "last_batch_size": self.last_batch_size,
            # part of kv_used_tokens: voice prefixes kept for reuse that no request holds (evicted on demand)
            "kv_cached_tokens": s.prefix_cache.num_evictable_slots if s.prefix_cache is not None else 0,
        }
