"""Work that takes more than one run of the model, behind ``tools.vision.Vision``.

``tiles`` (reading and detecting a large image in tiles, and the offline reader's tiles),
``budgets`` (compare_budgets: one image at several budgets, scored and recommended),
``consensus`` (several budgets' boxes fused), ``verify`` (each box's crop asked again) and
``auto_budget`` (budget "auto": the smallest that keeps what the task needs).
"""
