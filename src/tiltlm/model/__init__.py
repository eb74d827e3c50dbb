"""Models: loading (local folders, .gguf files), LoRA adapters (peft), and the reference log-probs."""
