"""Client: text streamed in pieces over the bistream WebSocket; writes a WAV file.

Kept at this path for the scripts that call it. The client is `light_tts.clients.bistream`,
installed as `lighttts-bistream`; this file passes its command line through unchanged (same flags,
same default output file), from an installed package or a plain checkout.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from light_tts.clients.bistream import main

    main()
