"""Where a model runs: in this process through transformers (``local``; Gemma 4's fast path keeps
its ``cache``; ``accel`` is the GPU path) or on an OpenAI-compatible engine (``engine``, reading
its answers in ``replies``). ``hub`` finds checkpoints; ``streaming`` carries generated text to a caller."""
