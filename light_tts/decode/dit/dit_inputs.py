"""The inputs of one packed, paged pass of CosyVoice3's DiT flow, built on the host from the step's ChunkSpecs (the
same specs CosyVoice2's pass takes: flow_inputs.py describes them and the packing).

Packing: the rows' new tokens are concatenated (Mt), their frames too (Mf = 2 Mt: each token's lookahead-layer output
repeated twice, so packed frames are the packed tokens repeated), and the DiT sees every frame once per CFG branch
(virtual rows, branch-major: Mv = 2 Mf). The lookahead layer is conv taps over tokens as in CosyVoice2's pass. The
DiT's positional convs (k=31, 30 frames of left context) run as one grouped conv1d over an extended sequence in
which every virtual row is preceded by its 30 cached inputs (from its read slot): `pos["ext"]` gathers it from
[inputs; tails read; zero row], `pos["out"]` picks each frame's output, and the rows' last 30 inputs (and, for a row
that registers a voice prefix, the 30 before the prefix boundary) are saved back. Rotary positions are absolute
frames. Padding (graph buckets) reads the zero row, writes the scratch page and the trash slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from light_tts.decode.dit.dit_cache import POS_TAIL, DiTCacheShape
from light_tts.decode.flow.flow_inputs import (
    EST_BLOCK_M,
    LA_TAIL,
    LA_TAPS,
    AttentionRows,
    Bucket,
    ChunkSpec,
    _Attention,
    _page_writes,
    _store_items,
    _Taps,
    page_table_array,
    pass_sizes,
)

RATIO = 2  # mel frames per token


@dataclass
class DiTInputs:
    tokens: torch.Tensor  # [Mt_in] int64 token ids of the new and lookahead tokens
    x_rows: torch.Tensor  # [Mt] row of each new token in `tokens` (the lookahead layer's residual)
    la_in_taps: torch.Tensor  # [Mt, 4] into [embedded tokens; zero]
    la: dict[str, torch.Tensor]  # conv2 taps [Mt, 3], tail_read [2R], save_src, save_dst
    pos: dict[str, torch.Tensor]  # ext [Lx], out [Mv], tail_read [30 * 2R], save_src, save_dst
    positions: torch.Tensor  # [Mv] absolute frame of every virtual row's frame (rotary)
    est_attn: AttentionRows
    est_store: dict[str, torch.Tensor]
    page_table: torch.Tensor  # [R, max_pages] int32
    noise_frames: torch.Tensor  # [Mf] absolute frame (the CFM's fixed noise column)
    spk_slots: torch.Tensor  # [Mf]
    cond: torch.Tensor  # [Mf, 80]
    frame_starts: list[int] = field(default_factory=list)  # host-side: where each row's mel lies in the output
    num_frames: list[int] = field(default_factory=list)

    def tensors(self) -> list[torch.Tensor]:
        """Every device tensor, in a fixed order (graph static buffers are filled from these)."""
        out = [self.tokens, self.x_rows, self.la_in_taps]
        for part in (self.la, self.pos, self.est_store):
            out += [part[k] for k in sorted(part)]
        attn = self.est_attn
        out += [attn.rows[k] for k in sorted(attn.rows)] + [attn.work_row, attn.work_block]
        return out + [self.positions, self.page_table, self.noise_frames, self.spk_slots, self.cond]


class _PosConv:
    """The extended sequence of the positional convs over virtual rows, and their tail reads and saves."""

    def __init__(self):
        self.ext: list[int] = []  # entries: >= 0 packed input rows; -(1 + k): the k-th tail row read
        self.out: list[tuple[int, int, int]] = []  # (virtual row position, conv output position, frames)
        self.tail_read: list[int] = []
        self.save_src: list[int] = []  # into the extended sequence
        self.save_dst: list[int] = []
        self.rows: list[tuple[int, int]] = []  # (ext position of the row's first tail entry, frames)

    def add_row(self, v_first: int, num: int, read_entry: int) -> None:
        start = len(self.ext)
        self.ext += [-(1 + len(self.tail_read) + j) for j in range(POS_TAIL)] + list(range(v_first, v_first + num))
        self.tail_read += [read_entry + j for j in range(POS_TAIL)]
        # the conv's output i sees ext[i, i + 30]: frame k of the row is output start + k
        self.out.append((v_first, start, num))
        self.rows.append((start, num))

    def save(self, row: int, end: int, dst_entry: int) -> None:
        """The 30 inputs before row-relative frame `end` (tails included) into entries dst_entry + 0..29."""
        start, _ = self.rows[row]
        self.save_src += range(start + end, start + end + POS_TAIL)
        self.save_dst += [dst_entry + j for j in range(POS_TAIL)]

    def finish(
        self, num_inputs: int, num_tails: int, num_ext: int, num_out: int, num_saves: int, trash_entry: int, device
    ) -> dict[str, torch.Tensor]:
        zero = num_inputs + num_tails
        fix = lambda a: np.where(a >= 0, a, num_inputs - 1 - a)  # noqa: E731  tail k -> num_inputs + k
        ext = fix(np.array(self.ext + [zero] * (num_ext - len(self.ext)), dtype=np.int64))
        pad = num_saves - len(self.save_src)
        as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
        out = np.zeros(num_out, dtype=np.int64)  # by virtual row position; padding frames read output 0
        for v_first, start, num in self.out:
            out[v_first : v_first + num] = np.arange(start, start + num)
        return {
            "ext": as_t(ext),
            "out": as_t(out),
            "tail_read": as_t(self.tail_read + [0] * (num_tails - len(self.tail_read))),
            "save_src": as_t(self.save_src + [len(ext) - 1] * pad),
            "save_dst": as_t(self.save_dst + [trash_entry] * pad),
        }


def build_dit_inputs(
    specs: list[ChunkSpec],
    shape: DiTCacheShape,
    num_slots: int,
    scratch_page: int,
    device: torch.device,
    bucket: Bucket | None = None,
    table_width: int = 0,
) -> DiTInputs:
    """The pass's index tensors. bucket=None: exact sizes (eager); else padded to the bucket's static shapes."""
    mt, mt_in, r_pad, mt_pad, mt_in_pad = pass_sizes(specs, bucket)
    mf_pad = RATIO * mt_pad
    trash = num_slots - 1
    la, pos, est_attn = _Taps(3, LA_TAIL), _PosConv(), _Attention(EST_BLOCK_M)
    est_store: list[tuple] = []
    tokens, x_rows, la_in_taps, noise_frames, spk_slots = [], [], [], [], []
    positions = np.zeros(2 * mf_pad, dtype=np.int64)
    cond = np.zeros((mf_pad, shape.out_channels), dtype=np.float32)
    page_table = page_table_array(specs, r_pad, scratch_page, bucket, table_width)
    frame_starts, num_frames = [], []
    tok_in = tok = 0
    for r, s in enumerate(specs):
        n = s.num_new
        tokens += s.tokens
        x_rows += range(tok_in, tok_in + n)
        ahead = np.arange(n)[:, None] + np.arange(LA_TAPS)[None, :]  # conv1: the token and the next 3
        la_in_taps.append(np.where(ahead < len(s.tokens), tok_in + ahead, mt_in_pad))
        la.add_row(tok, n, s.read_slot * LA_TAIL, np.arange(n)[:, None] + np.arange(-2, 1)[None, :], tok)
        for end, slot in s.saves if s.saves is not None else [(n, s.slot)]:
            la.save(r, end, slot * LA_TAIL)
        f0 = RATIO * s.t0
        noise_frames += range(f0, f0 + RATIO * n)
        spk_slots += [s.slot] * (RATIO * n)
        if s.cond is not None:
            cond[RATIO * tok : RATIO * (tok + n)] = s.cond
        frame_starts.append(RATIO * tok)
        num_frames.append(RATIO * n)
        tok_in += len(s.tokens)
        tok += n
    for branch in range(2):  # virtual rows: all conditioned rows, then all unconditioned ones
        for r, s in enumerate(specs):
            m, f0 = RATIO * s.num_new, RATIO * s.t0
            v_first = branch * mf_pad + frame_starts[r]
            positions[v_first : v_first + m] = np.arange(f0, f0 + m)
            pos.add_row(v_first, m, (s.read_slot * 2 + branch) * POS_TAIL)
            for end, slot in s.saves if s.saves is not None else [(s.num_new, s.slot)]:
                pos.save(len(pos.rows) - 1, RATIO * end, (slot * 2 + branch) * POS_TAIL)
            est_attn.add(v_first, m, f0, r, branch, 1 if s.full_attention else 0, s.skip_pages)
            est_store += _page_writes(s.page_table, f0, m, shape.page_frames, v_first, branch)
    mv_pad = 2 * mf_pad
    saves = 2 * r_pad  # a row's own tail and possibly a prefix's
    work = (mv_pad // EST_BLOCK_M + 2 * r_pad) if bucket else 0  # an upper bound on work items
    as_i64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)  # noqa: E731
    return DiTInputs(
        tokens=as_i64(tokens + [0] * (mt_in_pad - mt_in)),
        x_rows=as_i64(list(x_rows) + [mt_in_pad] * (mt_pad - mt)),
        la_in_taps=as_i64(np.concatenate(la_in_taps + [np.full((mt_pad - mt, LA_TAPS), mt_in_pad)])),
        la=la.finish(mt_pad, r_pad, mt_pad, trash * LA_TAIL, LA_TAIL * saves if bucket else len(la.save_src), device),
        pos=pos.finish(
            mv_pad,
            POS_TAIL * 2 * r_pad,
            mv_pad + POS_TAIL * 2 * r_pad,
            mv_pad,
            POS_TAIL * 2 * saves if bucket else len(pos.save_src),
            (trash * 2) * POS_TAIL,
            device,
        ),
        positions=as_i64(positions),
        est_attn=est_attn.finish(2 * r_pad, max(work, len(est_attn.work_row)), device),
        est_store=_store_items(
            est_store,
            max(mv_pad // shape.page_frames + 2 * r_pad, len(est_store)) if bucket else len(est_store),
            device,
        ),
        page_table=torch.as_tensor(page_table, device=device),
        noise_frames=as_i64(noise_frames + [0] * (mf_pad - RATIO * mt)),
        spk_slots=as_i64(spk_slots + [trash] * (mf_pad - RATIO * mt)),
        cond=torch.as_tensor(cond, device=device),
        frame_starts=frame_starts,
        num_frames=num_frames,
    )
