"""Hostile-input fuzzer for metallic's loaders (see ``runner`` for the design).

Modules: ``gguf_io`` (GGUF layout parser and writer used to aim mutations), ``corpus`` (the
seed models), ``mutators`` (deterministic mutation plans and how to apply them), ``worker`` (fork
server that runs each case in a child process), ``runner`` (shards, minimisation, reports).
"""
