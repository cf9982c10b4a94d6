"""``tokcal demo``: a complete, offline run of the product on a laptop CPU.

A tiny Qwen2-shaped model and a byte-level BPE are built here from scratch, fine-tuned on
synthetic paper reviews with the Hugging Face ``Trainer`` and tokcal's callback logging to
MLflow (a sqlite file in the demo folder), then the saved checkpoints are backfilled on a
held-out split and a report is written. See :func:`tokcal.demo.run.run_demo`.
"""
