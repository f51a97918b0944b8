"""Client: one streaming zero-shot request; prints time to first audio, writes a WAV file.

Kept at this path for the scripts that call it. The client is `light_tts.clients.stream`,
installed as `lighttts-stream`; this file passes its command line through unchanged (same flags,
same default output file), from an installed package or a plain checkout.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from light_tts.clients.stream import main

    main(default_out="zs_stream.wav")
