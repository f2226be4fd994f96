"""Task tuning: cloud data augmentation, the three filters and supervised fine-tuning (rl.trainer=sft)."""
