"""The search service: the dataset's memory.

* `clip_model`  — CLIP ViT-L/14@336 image/text features (SFHQ's `CLIP_ViTL_14@336`), torch or ONNX Runtime.
* `index`       — FAISS vector index with metadata filters, tuned by measured recall, persisted atomically.
* `dedup`       — near-duplicate removal (cosine > 0.92) that scales to SFHQ's 425k images.
* `taste`, `labels` — the learned "taste" classifier (VTA's recipe) and its durable label log.
* `sfhq_import` — index a downloaded SFHQ part from its released features (restricted unpickler).
* `curate`, `state`, `service` — the queue stages and the gRPC servicer.
* `random_weights`, `synthetic` — random CLIP folders and CLIP-like feature sets for tests and benchmarks.

Submodules are imported one by one; importing this package loads nothing heavy.
"""
