"""Benchmarks, one command per module here (`python -m light_tts.bench.X`, its command line in its docstring;
docs/performance.md, docs/bench-streams.md and docs/quantization.md say what each measures). What several
commands share is below: `serving/` for the whole-server benchmarks (the server in a subprocess, the load
generator, the listener model, scoring, the pressure mixes) and `engines/` for the engine benchmarks (the decode
bench's models, engines and roofline; the LLM bench's model families).

The top of the stack: may import any part of light_tts. Helper modules live in the subpackages so that this
folder lists the commands only.
"""
