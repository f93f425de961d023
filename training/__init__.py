"""Fine-tune ruDialoGPT on a dialogue CSV: `python -m training ...` or `training.train.train(cfg)`."""
