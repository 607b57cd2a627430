"""faultwatch training: contrastive pretraining, fine-tuning, baselines and evaluation."""
