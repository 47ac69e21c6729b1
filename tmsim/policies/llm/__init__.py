"""Qwen training managers: the offline model, the prompted policy, LoRA fine-tuning."""
