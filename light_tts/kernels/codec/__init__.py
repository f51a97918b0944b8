"""The codecs' kernels: SNAC's decoder blocks fused around their GEMMs (Orpheus's decode process)."""
