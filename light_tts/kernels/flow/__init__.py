"""The decode process's kernels: the flow's paged attention (the estimator's, the encoder's relative-position
one), page stores, the fused estimator and conformer blocks (QKV store, block tail, tap conv, CFM step), and
HiFT's Snake and counter-based noise. `flow_ops.py` is the one entry point the decode engines and HiFT call."""
