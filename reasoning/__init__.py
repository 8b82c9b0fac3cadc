"""dlmrl's fine-tuning side: config, models, tasks, SFT, RL trainer, evaluation, CLI."""
