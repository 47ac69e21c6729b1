"""LLM training managers: pretrained models (fetched by tmsim.models), prompted or LoRA-tuned, and hosted ones."""
