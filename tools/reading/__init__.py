"""Reading text without the model, and cutting a page into tiles: ``tiling`` (pure tile geometry,
page mapping and merge rules) and ``offline`` (the offline PP-OCR reader)."""
