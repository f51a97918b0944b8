"""CPU request state of the LLM engine: what the server submits (LLMRequest), what the engine tracks per request
(Sequence: the token stream fed to the model and what it produced), and what a step returns (TokenOutput).

How a request becomes its Sequence is the family's layout (spec.py): TokenLayout here for the CosyVoice speech
LMs, prompt_layout.PromptLayout for a plain causal LM. A layout provides start(seq), length_bounds(req, max_total),
shareable_prefix_len(seq), check(req), check_text(ids), the stop ids and eos (ids a request may forbid).

TokenLayout's ids live in one space, so that one embedding table (weights.py) embeds any input:
  [0, num_speech_rows)                  speech ids (speech_embedding rows; the family's special ids at the top)
  num_speech_rows, num_speech_rows + 1  sos, task_id when they are llm_embedding rows (CosyVoice2; a family whose
                                        sos and task_id are speech rows, CosyVoice3, has no such rows)
  text_offset + t                       text id t (embed_tokens row t)
A Sequence's `token_ids` are the inputs in feed order; the KV cache holds `token_ids[:num_computed]`, and a running
sequence always has its uncomputed inputs at the end (one sampled token while decoding, a whole prompt before the
first prefill or after a preemption, a bistream text block after a fill).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from light_tts.model_config import LLMConfig


@dataclass
class LLMRequest:
    """What the server submits. min_len/max_len default to the layout's bounds (CosyVoice: 2x/20x the text tokens,
    prompt text excluded but for its num_counted_prompt_tokens last ones: the prompt text that upstream's mode
    carries in the text itself, CosyVoice3's cross-lingual system text). A PromptLayout takes the whole prompt as
    `text_token_ids`.

    min_len = max_len = N asks for exactly N speech tokens (every stop id is forbidden until then, like vLLM's
    ignore_eos with max_tokens, whatever the family's MinLenRule lets through), in bistream requests too: the
    server's `fixed_speech_tokens` option.

    bistream: `text_token_ids` is the first piece of text; more comes through LLMEngine.append_text(...) and the
    last call says is_last. greedy=True decodes with argmax (parity tests); otherwise RAS with `seed`.
    """

    req_id: str
    text_token_ids: list[int]
    prompt_text_token_ids: list[int] = field(default_factory=list)
    prompt_speech_token_ids: list[int] = field(default_factory=list)
    seed: int = 0
    greedy: bool = False
    min_len: int | None = None
    max_len: int | None = None
    bistream: bool = False
    num_counted_prompt_tokens: int = 0  # prompt text counted as text in the default bounds (CosyVoice3 cross-lingual)


@dataclass
class TokenOutput:
    req_id: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: str | None = None  # "stop" | "length" | "error:<message>"


class SeqStatus(Enum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2


@dataclass(frozen=True)
class TokenLayout:
    """The CosyVoice speech LMs' id space (see module doc), their special speech ids (the family's SpeechIds) and
    prompt layout."""

    num_speech_rows: int
    num_text_ids: int
    eos: int
    fill: int
    stop_ids: frozenset[int]
    mix_text: int
    mix_speech: int
    sos: int
    task_id: int
    num_special_rows: int  # llm_embedding rows between the speech and the text ids (2 or 0)
    prompt_end_text_id: int | None = None  # bistream: the prompt text through it goes right after sos

    @classmethod
    def from_config(cls, cfg: LLMConfig) -> TokenLayout:
        ids = cfg.ids
        num_special = 2 if ids.sos_row is None else 0
        sos = cfg.num_speech_rows if ids.sos_row is None else ids.sos_row
        task_id = cfg.num_speech_rows + 1 if ids.task_row is None else ids.task_row
        return cls(
            cfg.num_speech_rows,
            cfg.qwen.vocab_size,
            cfg.eos_token,
            cfg.fill_token,
            frozenset(cfg.stop_token_ids),
            cfg.mix_ratio[0],
            cfg.mix_ratio[1],
            sos,
            task_id,
            num_special,
            cfg.prompt_end_text_id,
        )

    @property
    def text_offset(self) -> int:
        return self.num_speech_rows + self.num_special_rows

    @property
    def num_embeddings(self) -> int:
        return self.text_offset + self.num_text_ids

    def text(self, ids: list[int]) -> list[int]:
        return [self.text_offset + t for t in ids]

    def prompt_prefix_len(self, prompt_text: list[int]) -> int:
        """Prompt text ids bistream feeds right after sos (through prompt_end_text_id), as SpeechLM does."""
        end = self.prompt_end_text_id
        return prompt_text.index(end) + 1 if end is not None and end in prompt_text else 0

    def start(self, seq: Sequence) -> None:
        """The inputs a request starts with: offline [sos, prompt text + text, task_id, prompt speech]; bistream
        [sos] and a feeder for the rest."""
        req = seq.req
        if req.bistream:
            seq.token_ids = [self.sos]
            seq.feeder = BistreamFeeder(seq, req)
        else:
            seq.token_ids = (
                [self.sos]
                + self.text(req.prompt_text_token_ids + req.text_token_ids)
                + [self.task_id]
                + list(req.prompt_speech_token_ids)
            )

    def length_bounds(self, req: LLMRequest, max_total_len: int) -> tuple[int, int]:
        # bistream text length is unknown up front: no min_len (upstream has none), max_len bounded by the KV row
        num_text = len(req.text_token_ids) + req.num_counted_prompt_tokens
        default_min, default_max = (0, max_total_len) if req.bistream else (2 * num_text, 20 * num_text)
        return (
            default_min if req.min_len is None else req.min_len,
            default_max if req.max_len is None else req.max_len,
        )

    def shareable_prefix_len(self, seq: Sequence) -> int:
        """Leading inputs that depend on the voice only (prompt text, and in bistream the prompt speech mixed into
        it): another request with the same voice computes the same keys and values there."""
        num_prompt_text = len(seq.req.prompt_text_token_ids)
        if seq.feeder is None:
            return 1 + num_prompt_text  # the target text follows the prompt text, the prompt speech after it
        num_speech = len(seq.req.prompt_speech_token_ids)
        n = 1 + self.prompt_prefix_len(seq.req.prompt_text_token_ids)
        num_prompt_text -= n - 1
        for _ in range(num_prompt_text // self.mix_text):
            if num_speech <= 0:
                break
            n += self.mix_text + min(self.mix_speech, num_speech)
            num_speech -= self.mix_speech
        return n

    def check(self, req: LLMRequest) -> str | None:
        """Why the engine cannot run this request, or None."""
        if not req.bistream and not req.text_token_ids:
            return "empty text"
        problem = self.check_text(req.text_token_ids + req.prompt_text_token_ids)
        if problem is None and any(not 0 <= t < self.eos for t in req.prompt_speech_token_ids):
            return f"prompt speech token ids must be in [0, {self.eos})"
        return problem

    def check_text(self, text_token_ids: list[int]) -> str | None:
        if any(not 0 <= t < self.num_text_ids for t in text_token_ids):
            return f"text token ids must be in [0, {self.num_text_ids})"
        return None


class Sequence:
    """One request inside the engine. Offline requests feed their whole prompt at once; bistream ones are fed by a
    BistreamFeeder."""

    def __init__(self, req: LLMRequest, layout: TokenLayout, arrival: int, max_total_len: int):
        self.req = req
        self.req_id = req.req_id
        self.layout = layout
        self.arrival = arrival
        self.status = SeqStatus.WAITING
        self.finish_reason: str | None = None
        self.num_computed = 0
        self.slots: list[int] = []  # KV slot of each computed (or about to be computed) token
        self.row = -1  # row of the runner's req_to_token table while the sequence holds KV
        self.num_shared = 0  # leading slots owned by the prefix cache, not by this sequence
        self.decoded: list[int] = []  # every decoded id in order: the RAS window (fills included, as upstream)
        self.num_output = 0  # speech tokens returned to the caller
        self.first_output_at: float | None = None  # when the first one was (the scheduler's first-hop priority)
        self.min_len, self.max_len = layout.length_bounds(req, max_total_len)
        self.token_ids: list[int] = []
        self.feeder: BistreamFeeder | None = None
        layout.start(self)
        self.prefix_len = layout.shareable_prefix_len(self)
        # the prefix ids themselves key the cache: a dict hashes them, and equality rules out hash collisions
        self.prefix_key = tuple(self.token_ids[: self.prefix_len]) if self.prefix_len > 1 else None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def is_ready(self) -> bool:
        """Has inputs to compute now (a bistream request waiting for text has none)."""
        return self.num_new_tokens > 0 and (self.feeder is None or self.feeder.is_decoding)

    @property
    def is_finished(self) -> bool:
        return self.status == SeqStatus.FINISHED

    def forbids_stop(self) -> bool:
        """The next step applies the family's MinLenRule (upstream ignore_eos): before min_len, and in bistream
        while text is still coming."""
        if self.feeder is not None and not self.feeder.is_final:
            return True
        return self.num_output < self.min_len

    def forbids_every_stop(self) -> bool:
        """The caller fixed the length (min_len = max_len) and it is not reached: no stop id at all at the next step,
        also where the family's MinLenRule lets some through (CosyVoice3's masks only sos)."""
        fixed = self.req.min_len is not None and self.req.min_len == self.req.max_len
        return fixed and self.num_output < self.min_len

    def forced_token(self) -> int | None:
        """A token decided without sampling at the next step (the bistream fill), or None."""
        return self.feeder.forced_token() if self.feeder is not None else None

    def append_decoded(self, token: int) -> list[int]:
        """Take the id decoded at this step; returns the speech tokens to hand to the caller (maybe none)."""
        if self.feeder is not None:
            return self.feeder.on_decoded(token)
        if token in self.layout.stop_ids:
            self.finish("stop")
            return []
        self.decoded.append(token)
        self.token_ids.append(token)
        self.num_output += 1
        if self.num_output >= self.max_len:
            self.finish("length")
        return [token]

    def finish(self, reason: str) -> None:
        self.status = SeqStatus.FINISHED
        self.finish_reason = reason


def recent_window(seq: Sequence, win_size: int) -> list[int]:
    """The last win_size decoded ids, left-padded with -1 (never a token id)."""
    recent = seq.decoded[-win_size:]
    return [-1] * (win_size - len(recent)) + recent


class BistreamFeeder:
    """Feeds a bistream request as speech_lm.SpeechLM.generate_bistream (upstream inference_bistream) does.

    Each text piece is one turn of upstream's loop over pieces, taken only while the model is not decoding:
    [sos, 5 text, 15 prompt speech, ...] while prompt speech lasts (prompt text first), then 5 text tokens before
    each run of generated tokens. Decoding stops for more text at a fill, which is forced every 16th decoded id (it
    is never fed and never returned). When the last piece is taken, the rest of the text and task_id follow (after
    the last speech token again, as upstream feeds it twice) and decoding runs to a stop id.
    """

    def __init__(self, seq: Sequence, req: LLMRequest):
        self.seq = seq
        self.layout = seq.layout
        prefix = self.layout.prompt_prefix_len(req.prompt_text_token_ids)
        seq.token_ids += self.layout.text(req.prompt_text_token_ids[:prefix])  # CosyVoice3: through <|endofprompt|>
        self.text_cache = self.layout.text(req.prompt_text_token_ids[prefix:])
        self.prompt_speech = list(req.prompt_speech_token_ids)
        num_prompt, num_speech = len(self.prompt_speech), self.layout.mix_speech
        self.next_fill_index = (num_prompt // num_speech + 1) * num_speech - num_prompt
        self.pieces: deque[list[int]] = deque([list(req.text_token_ids)])
        self.num_text_tokens = len(req.text_token_ids)  # target text so far (prompt text excluded)
        self.is_text_done = False
        self.is_decoding = False
        self.is_final = False
        self.advance()

    def add_text(self, text_token_ids: list[int], is_last: bool) -> None:
        # an empty last piece only says the text has ended (the server learns it from {"finish": true}); it is
        # not one more turn of upstream's loop over pieces
        if text_token_ids or not is_last:
            self.pieces.append(list(text_token_ids))
        self.num_text_tokens += len(text_token_ids)
        self.is_text_done = self.is_text_done or is_last
        self.advance()

    def advance(self) -> None:
        """Take queued pieces while the model waits for text; stops once decoding can go on."""
        seq, num_text, num_speech = self.seq, self.layout.mix_text, self.layout.mix_speech
        while not self.is_decoding and not seq.is_finished:
            if self.pieces:
                self.text_cache += self.layout.text(self.pieces.popleft())
                while self.prompt_speech and len(self.text_cache) >= num_text:
                    seq.token_ids += self.text_cache[:num_text] + self.prompt_speech[:num_speech]
                    self.text_cache, self.prompt_speech = self.text_cache[num_text:], self.prompt_speech[num_speech:]
                if self.prompt_speech:
                    continue
                is_after_fill = bool(seq.decoded) and seq.decoded[-1] == self.layout.fill
                if is_after_fill or (not seq.decoded and seq.num_tokens == 1):
                    if len(self.text_cache) < num_text:
                        continue
                    seq.token_ids += self.text_cache[:num_text]
                    self.text_cache = self.text_cache[num_text:]
                self.is_decoding = True
            elif self.is_text_done:
                again = [seq.token_ids[-1]] if seq.decoded else []  # the last speech token, fed a second time
                seq.token_ids += again + self.text_cache + [self.layout.task_id]
                self.text_cache = []
                self.is_final = self.is_decoding = True
                # once the text is known, bound the output as the offline path does: 20 x its text tokens
                # (within the caller's max_len), unless the caller fixed the length
                if seq.req.min_len is None:
                    seq.max_len = min(seq.max_len, 20 * self.num_text_tokens)
            else:
                return

    def forced_token(self) -> int | None:
        if not self.is_final and len(self.seq.decoded) == self.next_fill_index:
            return self.layout.fill
        return None

    def on_decoded(self, token: int) -> list[int]:
        seq = self.seq
        seq.decoded.append(token)
        if self.is_final and token in self.layout.stop_ids:
            seq.finish("stop")
            return []
        if not self.is_final and token == self.layout.fill:
            self.next_fill_index += self.layout.mix_speech + 1
            self.is_decoding = False
            self.advance()
            return []
        if token in self.layout.stop_ids:  # another special id while text is still coming: upstream raises
            seq.finish("stop")
            return []
        seq.token_ids.append(token)
        seq.num_output += 1
        if seq.num_output >= seq.max_len:
            seq.finish("length")
        return [token]
