"""The capacity benchmark's calls to the server besides the load: saved voices and counters from /metrics.

With the /v1/audio/voices API, a saved voice is uploaded once and requests name it by `voice_id` (the server
keeps its encoded prompt, counted as saved_voice_prompts); without it, saved voices are sent as the same prompt
bytes every time (a voice cache hit after the first). Voices uploaded here are deleted when the benchmark ends.
"""

from __future__ import annotations

import re

import httpx

COUNTERS = {  # name in the level's "server" block -> (metric, label that must match)
    "voice_cache_hits": ("lighttts_voice_cache_lookups_total", 'result="hit"'),
    "voice_cache_misses": ("lighttts_voice_cache_lookups_total", 'result="miss"'),
    # a saved voice used by id brings its features along: no cache lookup, no model run
    "saved_voice_prompts": ("lighttts_prompt_features_total", 'source="saved"'),
    "requests_ok": ("lighttts_requests_total", 'outcome="ok"'),
    # pressure (issue 20): streams whose pages went to an older stream, new streams refused with 429 before their
    # 200, and the waits for pages, slots or capacity behind them
    "decode_preemptions": ("lighttts_decode_preemptions_total", ""),
    "overloaded_429": ("lighttts_errors_total", 'kind="overloaded"'),
    "decode_waits": ("lighttts_waits_total", 'stage="decode"'),
    "page_waits": ("lighttts_waits_total", 'reason="pages"'),  # decode waits for flow-cache pages (llm: kv, batch)
    "llm_preemptions": ("lighttts_llm_preemptions_total", ""),
    # where the GPU time went: engine steps, their seconds and their rows (summed over ranks)
    "llm_decode_steps": ("lighttts_llm_step_seconds_count", 'kind="decode"'),
    "llm_decode_step_s": ("lighttts_llm_step_seconds_sum", 'kind="decode"'),
    "llm_prefill_steps": ("lighttts_llm_step_seconds_count", 'kind="prefill"'),
    "llm_prefill_step_s": ("lighttts_llm_step_seconds_sum", 'kind="prefill"'),
    "llm_rows": ("lighttts_batch_size_sum", 'stage="llm"'),
    "decode_steps": ("lighttts_decode_step_seconds_count", ""),
    "decode_step_s": ("lighttts_decode_step_seconds_sum", ""),
    "decode_rows": ("lighttts_batch_size_sum", 'stage="decode"'),
}


def server_counters(url: str) -> dict | None:
    """Counters of the server's /metrics (summed over label sets); None when it has no such page."""
    try:
        r = httpx.get(f"{url}/metrics", timeout=30)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in r.text.splitlines():
        m = re.match(r"([a-z_]+)\{(.*)\} ([0-9.e+-]+)$", line)
        for name, (metric, label) in COUNTERS.items():
            if m and m.group(1) == metric and label in m.group(2):
                out[name] += float(m.group(3))
    return out


def counter_delta(before: dict | None, after: dict | None) -> dict | None:
    return None if before is None or after is None else {k: after[k] - before[k] for k in after}


def has_voices_api(url: str) -> bool:
    try:
        r = httpx.get(f"{url}/v1/audio/voices", timeout=10)
        return r.status_code == 200 and r.json().get("object") == "list"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


class SavedVoices:
    """Context manager: `ids` are the uploaded voices' ids (mode "api", or "auto" when the API answers), else None."""

    def __init__(self, url: str, mode: str, wavs: list[bytes], prompt_text: str):
        self.url, self.mode, self.wavs, self.prompt_text = url, mode, wavs, prompt_text
        self.ids: list[str] | None = None

    def __enter__(self) -> SavedVoices:
        if self.mode == "bytes" or (self.mode == "auto" and not has_voices_api(self.url)):
            return self
        self.ids = []
        try:
            for k, wav in enumerate(self.wavs):
                r = httpx.post(
                    f"{self.url}/v1/audio/voices",
                    timeout=60,
                    data={"text": self.prompt_text, "name": f"bench-streams-{k}"},
                    files={"audio": (f"voice{k}.wav", wav, "audio/wav")},
                )
                if r.status_code != 201:
                    raise SystemExit(f"uploading saved voice {k} failed: HTTP {r.status_code} {r.text[:200]}")
                self.ids.append(r.json()["id"])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for voice_id in self.ids or []:
            try:
                httpx.delete(f"{self.url}/v1/audio/voices/{voice_id}", timeout=10)
            except httpx.HTTPError:
                pass  # the server may be gone already; nothing of ours is left to clean up then
