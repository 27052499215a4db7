"""Knowledge injection by training: the fine-tuning loop (continued pre-training, SFT, RAFT, LoRA) and prompt distillation / knowledge modules."""
