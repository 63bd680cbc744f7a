"""EmoLA: LLaVA with a facial prior token, LoRA, self-describing checkpoints, inference."""
