"""The inputs of one packed, paged flow pass, built on the host from the step's chunks.

Three levels of state (as nano-vllm's Sequence -> batch -> GPU inputs): a DecodeRequest (CPU, engine.py) offers a
ChunkSpec (CPU, one row of this pass); build_flow_inputs turns the step's ChunkSpecs into FlowInputs, the index
tensors every layer of paged_flow.py reads, copied to the GPU once per step (into static buffers when the pass
replays a CUDA graph).

Packing: the rows' new tokens are concatenated (token rate, Mt rows), their frames too (frame rate, Mf = 2 Mt),
and the estimator sees every frame twice, once per CFG branch (virtual rows: all conditioned rows, then all
unconditioned ones; Mv = 2 Mf). Causal convolutions read their left context through "taps": for every output
position the rows of an extended input [packed inputs; the rows' cached tails; one zero row] it multiplies, so a
row never sees its neighbour and its first positions see its own cached tail. Tail saves copy the last inputs of
every row (and, for a row that registers a voice prefix, the inputs just before the prefix boundary) back into
the slots. Padding (graph buckets) points at the zero row, the scratch page and the trash slot, and its work
items carry row -1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from light_tts.decode.flow.flow_cache import FlowCacheShape

ENC_BLOCK_M = 16  # query rows per encoder attention work item (its positional gather is 3-D: small blocks)
EST_BLOCK_M = 64  # estimator: a whole 50-frame chunk per work item, so a stream's pages are read once per head
LA_TAPS, LA_TAIL = 4, 2  # the lookahead conv: the token and 3 ahead; its causal conv2 keeps 2 outputs
UP_TAPS, UP_TAIL = 5, 4  # the upsampling conv over repeated frames keeps 4
EST_TAPS, EST_TAIL = 3, 2  # every estimator causal conv keeps 2 frames


@dataclass
class ChunkSpec:
    """One row of a flow pass: the next chunk of a stream, or a whole utterance."""

    slot: int  # the stream's tail slot (its speaker vector lives there too)
    read_slot: int  # the tail slot read: 0 (zeros) for a fresh stream, a prefix's slot after a shared prefix
    page_table: list[int]  # the stream's pages, covering at least tokens [0, t0 + num_new)
    t0: int  # tokens already cached (a multiple of the page)
    tokens: list[int]  # the new tokens, then the lookahead tokens
    num_lookahead: int  # 3 for a non-final streamed chunk, 0 at the end of an utterance
    full_attention: bool = False  # a whole utterance at once (non-stream)
    cond: np.ndarray | None = None  # (2 num_new, 80) prompt-mel condition of the new frames; None: zeros
    # where the conv context is saved: (tokens from t0, slot); None: at the chunk's end into `slot`. A chunk that
    # registers a voice prefix also saves at the prefix boundary into the prefix's slot.
    saves: list[tuple[int, int]] | None = None
    skip_pages: tuple[int, int] = (0, 0)  # pages [lo, hi) hidden from attention (the context window)

    @property
    def num_new(self) -> int:
        return len(self.tokens) - self.num_lookahead


@dataclass(frozen=True)
class Bucket:
    """Static sizes of a graph-captured pass; every FlowInputs of the bucket has exactly these shapes."""

    num_tokens: int  # Mt: new tokens over all rows
    num_rows: int  # R

    @property
    def num_input_tokens(self) -> int:
        return self.num_tokens + LA_TAPS * self.num_rows

    def fits(self, specs: list[ChunkSpec]) -> bool:
        return len(specs) <= self.num_rows and sum(s.num_new for s in specs) <= self.num_tokens


@dataclass
class AttentionRows:
    """Per-row int32 arrays of one attention family (see kernels/flow/flow_attention.py) and its work items."""

    rows: dict[str, torch.Tensor]
    work_row: torch.Tensor
    work_block: torch.Tensor
    block_m: int  # query rows per work item


@dataclass
class FlowInputs:
    tokens: torch.Tensor  # [Mt_in] int64 token ids of the new and lookahead tokens
    x_rows: torch.Tensor  # [Mt] row of each new token in `tokens`
    la_in_taps: torch.Tensor  # [Mt, 4] into [embedded tokens; zero]
    la: dict[str, torch.Tensor]  # taps [Mt, 3], tail_read [2R], save_src, save_dst
    up: dict[str, torch.Tensor]  # taps [Mf, 5], tail_read [4R], save_src, save_dst
    est: dict[str, torch.Tensor]  # taps [Mv, 3], tail_read [4R], save_src, save_dst
    enc_attn: AttentionRows  # token rate
    up_attn: AttentionRows  # frame rate
    est_attn: AttentionRows  # virtual rows
    enc_store: dict[str, torch.Tensor]  # page writes: page, branch, row, len
    up_store: dict[str, torch.Tensor]
    est_store: dict[str, torch.Tensor]
    page_table: torch.Tensor  # [R, max_pages] int32
    noise_frames: torch.Tensor  # [Mf] absolute frame of every new frame (the CFM's fixed noise column)
    spk_slots: torch.Tensor  # [Mf] slot whose speaker vector each frame uses
    cond: torch.Tensor  # [Mf, 80]
    # host-side: where each row's mel lies in the packed output
    frame_starts: list[int] = field(default_factory=list)
    num_frames: list[int] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        """Every device tensor, in a fixed order (graph static buffers are filled from these)."""
        out = [self.tokens, self.x_rows, self.la_in_taps]
        for part in (self.la, self.up, self.est, self.enc_store, self.up_store, self.est_store):
            out += [part[k] for k in sorted(part)]
        for attn in (self.enc_attn, self.up_attn, self.est_attn):
            out += [attn.rows[k] for k in sorted(attn.rows)] + [attn.work_row, attn.work_block]
        return out + [self.page_table, self.noise_frames, self.spk_slots, self.cond]


class _Taps:
    """Accumulates one conv family's taps and tail copies over rows (positions relative to each row)."""

    def __init__(self, num_taps: int, tail: int):
        self.num_taps, self.tail = num_taps, tail
        self.taps: list[tuple[int, np.ndarray]] = []  # (first output position, taps of the row's outputs)
        self.tail_read: list[int] = []
        self.save_src: list[int] = []
        self.save_dst: list[int] = []
        self.rows: list[tuple[int, int, int]] = []  # (first packed input, number of inputs, tail offset)

    def add_row(self, first: int, num: int, read_entry: int, positions: np.ndarray, out_first: int) -> None:
        """A row whose inputs are packed rows [first, first + num) and whose outputs are packed positions from
        out_first on; its outputs tap `positions` (row-relative, [num_out, taps]; negative = the cached tail,
        -tail..-1); its tail comes from entries read_entry + 0..tail-1 of the flat tail buffer."""
        self.rows.append((first, num, len(self.tail_read)))
        self.tail_read += [read_entry + f for f in range(self.tail)]
        self.taps.append((out_first, self._resolve(len(self.rows) - 1, positions)))

    def save(self, row: int, end: int, dst_entry: int) -> None:
        """Copy the `tail` inputs just before row-relative position `end` into entries dst_entry + 0..tail-1."""
        positions = np.arange(end - self.tail, end)
        self.save_src += self._resolve(row, positions).tolist()
        self.save_dst += [dst_entry + f for f in range(self.tail)]

    def _resolve(self, row: int, positions: np.ndarray) -> np.ndarray:
        """Row-relative positions -> indices into the extended input; the tail part's offset is fixed at the end
        (finish), so tail indices are kept negative here: -(1 + tail row index)."""
        first, _, tail_offset = self.rows[row]
        return np.where(positions >= 0, first + positions, -(1 + tail_offset + self.tail + positions))

    def finish(
        self,
        num_inputs: int,
        num_rows_pad: int,
        num_out_pad: int,
        trash_entry: int,
        num_saves_pad: int,
        device,
        pad_src: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Index tensors over [inputs (num_inputs rows); tails (tail * num_rows_pad rows); zero]. pad_src: where
        padding saves read (default the zero row; the estimator reads its inputs only, so row 0 there)."""
        tail_base = num_inputs
        zero = num_inputs + self.tail * num_rows_pad
        fix = lambda a: np.where(a >= 0, a, tail_base - 1 - a)  # noqa: E731
        taps = np.full((num_out_pad, self.num_taps), zero, dtype=np.int64)  # padding outputs read zeros
        for out_first, row_taps in self.taps:
            taps[out_first : out_first + len(row_taps)] = fix(row_taps)
        tail_read = np.array(self.tail_read + [0] * (self.tail * num_rows_pad - len(self.tail_read)))
        pad = num_saves_pad - len(self.save_src)
        save_src = np.array(
            [fix(np.array(s)) for s in self.save_src] + [zero if pad_src is None else pad_src] * pad, dtype=np.int64
        )
        save_dst = np.array(self.save_dst + [trash_entry] * pad, dtype=np.int64)
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
        return {
            "taps": as_t(taps),
            "tail_read": as_t(tail_read),
            "save_src": as_t(save_src),
            "save_dst": as_t(save_dst),
        }


class _Attention:
    """Accumulates the rows and work items of one attention family."""

    def __init__(self, block_m: int):
        self.block_m = block_m
        self.cols = {
            k: [] for k in ("q_start", "num_q", "pos0", "ctx", "stream", "branch", "mode", "skip_lo", "skip_hi")
        }
        self.work_row: list[int] = []
        self.work_block: list[int] = []

    def add(self, q_start, num_q, pos0, stream, branch, mode, skip=(0, 0)) -> None:
        r = len(self.cols["q_start"])
        values = (q_start, num_q, pos0, pos0 + num_q, stream, branch, mode, *skip)
        for key, value in zip(self.cols, values):
            self.cols[key].append(value)
        for qb in range(-(-num_q // self.block_m)):
            self.work_row.append(r)
            self.work_block.append(qb)

    def finish(self, num_rows_pad: int, num_work_pad: int, device) -> AttentionRows:
        rows = {
            k: torch.tensor(v + [0] * (num_rows_pad - len(v)), dtype=torch.int32, device=device)
            for k, v in self.cols.items()
        }
        pad = num_work_pad - len(self.work_row)
        work_row = torch.tensor(self.work_row + [-1] * pad, dtype=torch.int32, device=device)
        work_block = torch.tensor(self.work_block + [0] * pad, dtype=torch.int32, device=device)
        return AttentionRows(rows, work_row, work_block, self.block_m)


def _store_items(items: list[tuple[int, int, int, int]], num_pad: int, device) -> dict[str, torch.Tensor]:
    items = items + [(-1, 0, 0, 0)] * (num_pad - len(items))
    cols = list(zip(*items)) if items else [(), (), (), ()]
    return {
        k: torch.tensor(list(c), dtype=torch.int32, device=device)
        for k, c in zip(("page", "branch", "row", "len"), cols)
    }


def _page_writes(table: list[int], first_pos: int, num: int, page: int, row0: int, branch: int) -> list[tuple]:
    """Page writes covering positions [first_pos, first_pos + num) of a stream (first_pos on a page boundary)."""
    return [(table[(first_pos + f) // page], branch, row0 + f, min(page, num - f)) for f in range(0, num, page)]


def pass_sizes(specs: list[ChunkSpec], bucket: Bucket | None) -> tuple[int, int, int, int, int]:
    """(new tokens, input tokens (lookahead included), and the padded rows, new tokens and input tokens: the
    bucket's, or the exact counts without one)."""
    mt, mt_in = sum(s.num_new for s in specs), sum(len(s.tokens) for s in specs)
    if bucket is None:
        return mt, mt_in, len(specs), mt, mt_in
    assert bucket.fits(specs), (bucket, len(specs), mt)
    return mt, mt_in, bucket.num_rows, bucket.num_tokens, bucket.num_input_tokens


def page_table_array(
    specs: list[ChunkSpec], num_rows: int, scratch_page: int, bucket: Bucket | None, table_width: int
) -> np.ndarray:
    """[rows, pages] int32: each row's pages (dropped ones, -1, and padding read the scratch page), `table_width`
    wide in a bucket."""
    max_pages = max([len(s.page_table) for s in specs] + [1])
    if bucket is not None:
        assert max_pages <= table_width, (max_pages, table_width)
        max_pages = table_width
    page_table = np.full((num_rows, max_pages), scratch_page, dtype=np.int32)
    for r, s in enumerate(specs):
        page_table[r, : len(s.page_table)] = [p if p >= 0 else scratch_page for p in s.page_table]
    return page_table


def build_flow_inputs(
    specs: list[ChunkSpec],
    shape: FlowCacheShape,
    num_slots: int,
    scratch_page: int,
    device: torch.device,
    bucket: Bucket | None = None,
    table_width: int = 0,
) -> FlowInputs:
    """The pass's index tensors. bucket=None: exact sizes (eager); else padded to the bucket's static shapes,
    with page tables `table_width` pages wide (the most pages a stream may hold)."""
    ratio = shape.page_frames // shape.page_tokens
    mt, mt_in, r_pad, mt_pad, mt_in_pad = pass_sizes(specs, bucket)
    mf, mf_pad = ratio * mt, ratio * mt_pad
    trash = num_slots - 1
    la, up, est = _Taps(EST_TAPS, LA_TAIL), _Taps(UP_TAPS, UP_TAIL), _Taps(EST_TAPS, EST_TAIL)
    enc_attn, up_attn, est_attn = _Attention(ENC_BLOCK_M), _Attention(ENC_BLOCK_M), _Attention(EST_BLOCK_M)
    enc_store, up_store, est_store = [], [], []
    tokens, x_rows, la_in_taps = [], [], []
    noise_frames, spk_slots = [], []
    cond = np.zeros((mf_pad, shape.out_channels), dtype=np.float32)
    page_table = page_table_array(specs, r_pad, scratch_page, bucket, table_width)
    frame_starts, num_frames = [], []
    tok_in = tok = 0
    for r, s in enumerate(specs):
        n, f0 = s.num_new, ratio * s.t0
        mode = 1 if s.full_attention else 0
        tokens += s.tokens
        x_rows += range(tok_in, tok_in + n)
        # lookahead conv1: token i and the next 3 inputs of the row (zeros past the row's tokens)
        ahead = np.arange(n)[:, None] + np.arange(LA_TAPS)[None, :]
        la_in_taps.append(np.where(ahead < len(s.tokens), tok_in + ahead, mt_in_pad))
        # conv2 (causal, k=3) over conv1's outputs, and the upsampling conv (k=5) over frames repeated from tokens
        la.add_row(tok, n, s.read_slot * LA_TAIL, np.arange(n)[:, None] + np.arange(-2, 1)[None, :], tok)
        frames = np.arange(ratio * n)[:, None] + np.arange(-UP_TAIL, 1)[None, :]  # repeated-frame positions
        up.add_row(tok, n, s.read_slot * UP_TAIL, np.where(frames >= 0, frames // ratio, frames), ratio * tok)
        for end, slot in s.saves if s.saves is not None else [(n, s.slot)]:
            la.save(r, end, slot * LA_TAIL)
            last = np.arange(ratio * end - UP_TAIL, ratio * end)
            up.save_src += up._resolve(r, np.where(last >= 0, last // ratio, last)).tolist()
            up.save_dst += [slot * UP_TAIL + f for f in range(UP_TAIL)]
        enc_attn.add(tok, n, s.t0, r, 0, mode, s.skip_pages)
        up_attn.add(ratio * tok, ratio * n, f0, r, 0, mode, s.skip_pages)
        enc_store += _page_writes(s.page_table, s.t0, n, shape.page_tokens, tok, 0)
        up_store += _page_writes(s.page_table, f0, ratio * n, shape.page_frames, ratio * tok, 0)
        noise_frames += range(f0, f0 + ratio * n)
        spk_slots += [s.slot] * (ratio * n)
        if s.cond is not None:
            cond[ratio * tok : ratio * (tok + n)] = s.cond
        frame_starts.append(ratio * tok)
        num_frames.append(ratio * n)
        tok_in += len(s.tokens)
        tok += n
    # estimator virtual rows: branch 0 (conditioned) rows, then branch 1 rows, each row's frames contiguous
    for branch in range(2):
        for r, s in enumerate(specs):
            m, f0 = ratio * s.num_new, ratio * s.t0
            v_first = branch * mf_pad + frame_starts[r]
            est.add_row(
                v_first,
                m,
                (s.read_slot * 2 + branch) * EST_TAIL,
                np.arange(m)[:, None] + np.arange(-2, 1)[None, :],
                v_first,
            )
            for end, slot in s.saves if s.saves is not None else [(s.num_new, s.slot)]:
                est.save(len(est.rows) - 1, ratio * end, (slot * 2 + branch) * EST_TAIL)
            est_attn.add(v_first, m, f0, r, branch, 1 if s.full_attention else 0, s.skip_pages)
            est_store += _page_writes(s.page_table, f0, m, shape.page_frames, v_first, branch)
    mv_pad = 2 * mf_pad
    work = lambda m, block: m // block + 2 * r_pad  # noqa: E731  an upper bound on work items
    if bucket is None:
        work = lambda m, block: 0  # noqa: E731
    saves = 2 * r_pad  # a row's own tail and possibly a prefix's
    inputs = FlowInputs(
        tokens=torch.tensor(tokens + [0] * (mt_in_pad - mt_in), dtype=torch.int64, device=device),
        x_rows=torch.tensor(list(x_rows) + [mt_in_pad] * (mt_pad - mt), dtype=torch.int64, device=device),
        la_in_taps=torch.as_tensor(
            np.concatenate(la_in_taps + [np.full((mt_pad - mt, LA_TAPS), mt_in_pad)]).astype(np.int64), device=device
        ),
        la=la.finish(mt_pad, r_pad, mt_pad, trash * LA_TAIL, LA_TAIL * saves if bucket else len(la.save_src), device),
        up=up.finish(mt_pad, r_pad, mf_pad, trash * UP_TAIL, UP_TAIL * saves if bucket else len(up.save_src), device),
        est=est.finish(
            mv_pad,
            2 * r_pad,
            mv_pad,
            trash * 2 * EST_TAIL,
            2 * EST_TAIL * saves if bucket else len(est.save_src),
            device,
            pad_src=0,
        ),
        enc_attn=enc_attn.finish(r_pad, max(work(mt_pad, ENC_BLOCK_M), len(enc_attn.work_row)), device),
        up_attn=up_attn.finish(r_pad, max(work(mf_pad, ENC_BLOCK_M), len(up_attn.work_row)), device),
        est_attn=est_attn.finish(2 * r_pad, max(work(mv_pad, EST_BLOCK_M), len(est_attn.work_row)), device),
        enc_store=_store_items(
            enc_store, max(mt_pad // shape.page_tokens + r_pad, len(enc_store)) if bucket else len(enc_store), device
        ),
        up_store=_store_items(
            up_store, max(mf_pad // shape.page_frames + r_pad, len(up_store)) if bucket else len(up_store), device
        ),
        est_store=_store_items(
            est_store,
            max(mv_pad // shape.page_frames + 2 * r_pad, len(est_store)) if bucket else len(est_store),
            device,
        ),
        page_table=torch.as_tensor(page_table, device=device),
        noise_frames=torch.tensor(noise_frames + [0] * (mf_pad - mf), dtype=torch.int64, device=device),
        spk_slots=torch.tensor(spk_slots + [trash] * (mf_pad - mf), dtype=torch.int64, device=device),
        cond=torch.as_tensor(cond, device=device),
        frame_starts=frame_starts,
        num_frames=num_frames,
    )
    return inputs
