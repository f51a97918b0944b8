"""Orpheus's own modules: the model directory (config.py), the offline LM and its prompt (lm.py), SNAC."""
