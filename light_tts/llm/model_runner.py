"""The model runner owns the device, in a fixed order: load weights into the engine layout -> warm up at the
largest prefill -> size the KV cache from the memory left (or max_total_token_num) -> capture decode CUDA graphs.
Each step it turns a ScheduledBatch into device inputs, runs the forward and samples one id per request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from light_tts.kernels.llm import ops
from light_tts.llm.cuda_graph import DecodeGraphs, PrefillGraphs
from light_tts.llm.model import EngineSpeechLM, ForwardInputs, KVCache
from light_tts.llm.quantization import check_support, kv_cache_format, quantize_linears
from light_tts.llm.scheduler import ScheduledBatch
from light_tts.llm.spec import LLMSpec
from light_tts.llm.weights import load_engine_weights
from light_tts.models.rope import body_inv_freq

if TYPE_CHECKING:
    from light_tts.llm.config import EngineConfig

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ModelRunner:
    def __init__(
        self,
        spec: LLMSpec,
        engine_cfg: EngineConfig,
        device: torch.device,
        state_dict: dict[str, torch.Tensor] | None = None,
    ):
        """state_dict: the released state dict (default: spec.read_weights())."""
        self.cfg = engine_cfg
        self.spec = spec
        self.body = spec.arch.body
        self.device = device
        self.dtype = DTYPES[engine_cfg.data_type]
        self.num_rows = engine_cfg.running_max_req_size + 1  # + the sentinel row 0
        q = self.body
        self.cos_sin = ops.build_cos_sin_cache(
            engine_cfg.max_req_total_len, q.head_dim, q.rope_theta, device, inv_freq=body_inv_freq(q)
        )
        self.sampler = spec.make_sampler(self.num_rows, device)
        self.quant_notes = check_support(engine_cfg.quantization, engine_cfg.kv_cache_dtype, device)
        self.kv_format = kv_cache_format(engine_cfg.kv_cache_dtype)
        for level, line in self.quant_notes:
            log.log(level, "%s", line)
        self.model = self._load(state_dict if state_dict is not None else spec.read_weights())
        self.num_kv_slots = self._size_kv_cache()
        self.kv = KVCache(
            self.body,
            self.num_kv_slots,
            self.num_rows,
            engine_cfg.max_req_total_len,
            self.dtype,
            device,
            self.kv_format,
        )
        self.graphs: DecodeGraphs | None = None
        self.prefill_graphs: PrefillGraphs | None = None
        self.last_logits: torch.Tensor | None = None
        self._capture_graphs()

    def _capture_graphs(self) -> None:
        """Decode graphs per batch bucket, then prefill graphs per (requests, tokens) bucket (CUDA only)."""
        cfg = self.cfg
        if self.device.type == "cuda" and not cfg.disable_cudagraph:
            max_batch = min(cfg.graph_max_batch_size, cfg.running_max_req_size)
            self.graphs = DecodeGraphs(self.model, self.sampler, self.kv, self.cos_sin, max_batch)
            max_tokens = min(cfg.prefill_graph_max_tokens, cfg.batch_max_tokens)
            self.prefill_graphs = PrefillGraphs(self.model, self.kv, self.cos_sin, max_tokens)

    def release(self) -> None:
        """Give the device back while idle: graphs and KV cache dropped, weights moved to host memory."""
        self.graphs = self.prefill_graphs = self.kv = self.last_logits = None
        self.sampler.release()
        self.model.to("cpu")
        self.cos_sin = self.cos_sin.cpu()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def reload(self) -> None:
        """Back on the device: weights, a KV cache of the same size (its contents were idle), graphs recaptured."""
        cfg = self.cfg
        self.model.to(self.device)
        self.cos_sin = self.cos_sin.to(self.device)
        self.sampler.reload()
        self.kv = KVCache(
            self.body, self.num_kv_slots, self.num_rows, cfg.max_req_total_len, self.dtype, self.device, self.kv_format
        )
        self._capture_graphs()

    def _load(self, state_dict: dict[str, torch.Tensor]) -> EngineSpeechLM:
        with torch.device("meta"):
            model = EngineSpeechLM(self.spec.arch)
        model.to_empty(device=self.device).to(self.dtype)
        model.tie_head()
        load_engine_weights(model, self.spec.engine_weights(state_dict))
        quantize_linears(model.layers, self.cfg.quantization)
        model.small_batch_rows = self.cfg.small_batch_rows
        return model.eval().requires_grad_(False)

    def _size_kv_cache(self) -> int:
        """KV slots: max_total_token_num if given, else a fraction of the device memory left after a warm-up at
        the largest prefill; never more than every row could use."""
        cfg = self.cfg
        most_useful = cfg.running_max_req_size * cfg.max_req_total_len
        if self.device.type != "cuda":
            return cfg.max_total_token_num or min(most_useful, 65536)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._warm_up()
        peak = torch.cuda.max_memory_allocated(self.device)
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        activations = peak - torch.cuda.memory_allocated(self.device)
        bytes_per_slot = KVCache.bytes_per_slot(self.body, self.dtype, self.kv_format)
        room = free - activations
        if cfg.max_total_token_num:
            if cfg.max_total_token_num * bytes_per_slot > room:
                raise MemoryError(
                    f"max_total_token_num {cfg.max_total_token_num} does not fit in "
                    f"{room / 2**30:.1f} GiB of free device memory"
                )
            return cfg.max_total_token_num
        num_slots = min(int(room * cfg.kv_cache_mem_fraction) // bytes_per_slot, most_useful)
        log.info("KV cache: %d slots (%.1f GiB)", num_slots, num_slots * bytes_per_slot / 2**30)
        return num_slots

    @torch.inference_mode()
    def _warm_up(self) -> None:
        """One prefill of batch_max_tokens tokens (split into rows of at most max_req_total_len) on a scratch cache."""
        cfg = self.cfg
        num_tokens = cfg.batch_max_tokens
        num_seqs = -(-num_tokens // cfg.max_req_total_len)
        scratch = KVCache(
            self.body, num_tokens, num_seqs + 1, cfg.max_req_total_len, self.dtype, self.device, self.kv_format
        )
        rows, start = [], 0
        for row in range(1, num_seqs + 1):
            n = min(cfg.max_req_total_len, num_tokens - start)
            rows.append((list(range(n)), list(range(start, start + n)), row, 0))
            start += n
        self.model(self._prefill_inputs(rows, scratch), scratch, self.cos_sin)
        torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> list[int]:
        """Forward and sample one id per sequence; decode batches replay CUDA graphs when they fit."""
        seqs = batch.seqs
        self.sampler.before_step(batch)
        graphs = self.graphs
        if batch.is_prefill or graphs is None or not graphs.can_run(len(seqs)):
            graphs = None
        if batch.is_prefill:
            rows = [(s.token_ids[s.num_computed :], s.slots[: s.num_tokens], s.row, s.num_computed) for s in seqs]
            prefill_graphs = self.prefill_graphs
            if prefill_graphs is not None and prefill_graphs.can_run(rows):
                self._write_tables(rows, self.kv)
                logits = prefill_graphs.forward(rows)
            else:
                logits = self.model(self._prefill_inputs(rows, self.kv), self.kv, self.cos_sin)
        else:
            width = self.kv.req_to_token.shape[1]
            meta = [
                [s.token_ids[-1] for s in seqs],
                [s.num_tokens - 1 for s in seqs],
                [s.slots[-1] for s in seqs],
                [s.row for s in seqs],
                [s.num_tokens for s in seqs],
                [s.row * width + s.num_tokens - 1 for s in seqs],
            ]
            if graphs is not None:
                logits = graphs.forward(meta)
            else:
                meta_tensor = torch.tensor(meta, dtype=torch.int64).to(self.device)
                logits = self.model(ForwardInputs.decode(meta_tensor), self.kv, self.cos_sin)
        # built while the device runs the forward: launches and graph replays return before the work is done
        sampling = self.sampler.pack(seqs)
        if graphs is not None:
            *outputs, sampling.packed = graphs.sample(sampling.packed)
        else:
            sampling.packed = sampling.packed.to(self.device)
            outputs = self.sampler.first_attempt(logits, sampling.packed)
        self.last_logits = logits  # [B, V] of the last step, for checks (a graph overwrites it at the next replay)
        return self.sampler.finish(*outputs, sampling)

    def _write_tables(self, rows: list[tuple[list[int], list[int], int, int]], kv: KVCache) -> None:
        """Each prefill request's slots (of its whole sequence) into its req_to_token row."""
        width = kv.req_to_token.shape[1]
        table_idx = [i for _, slots, row, _ in rows for i in range(row * width, row * width + len(slots))]
        table_slots = [slot for _, slots, _, _ in rows for slot in slots]
        kv.req_to_token.view(-1).index_copy_(
            0,
            torch.tensor(table_idx, dtype=torch.int64).to(self.device),
            torch.tensor(table_slots, dtype=torch.int32).to(self.device),
        )

    def _prefill_inputs(self, rows: list[tuple[list[int], list[int], int, int]], kv: KVCache) -> ForwardInputs:
        """rows: (new input ids, slots of the whole sequence, req_to_token row, tokens already cached) per request.
        Also writes each request's slots into its req_to_token row."""
        input_ids, positions, slot_mapping = [], [], []
        b_start_loc, b_seq_len, b_prefix_len = [], [], []
        for new_ids, slots, _row, num_cached in rows:
            seq_len = len(slots)
            b_start_loc.append(len(input_ids))
            input_ids += new_ids
            positions += range(num_cached, seq_len)
            slot_mapping += slots[num_cached:]
            b_seq_len.append(seq_len)
            b_prefix_len.append(num_cached)
        self._write_tables(rows, kv)
        dev, i32, i64 = self.device, torch.int32, torch.int64
        b_start = torch.tensor(b_start_loc, dtype=i32)
        new_lens = torch.tensor(b_seq_len, dtype=i32) - torch.tensor(b_prefix_len, dtype=i32)
        return ForwardInputs(
            input_ids=torch.tensor(input_ids, dtype=i64).to(dev),
            positions=torch.tensor(positions, dtype=i64).to(dev),
            slot_mapping=torch.tensor(slot_mapping, dtype=i64).to(dev),
            b_req_idx=torch.tensor([r[2] for r in rows], dtype=i32).to(dev),
            b_seq_len=torch.tensor(b_seq_len, dtype=i32).to(dev),
            is_prefill=True,
            b_start_loc=b_start.to(dev),
            b_prefix_len=torch.tensor(b_prefix_len, dtype=i32).to(dev),
            last_token_idx=(b_start + new_lens - 1).long().to(dev),
            max_new_len=int(new_lens.max()),
        )
