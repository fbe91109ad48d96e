"""The Lightning-style Trainer for fine-tuning: trainer, data module, callbacks."""
