"""Training: losses, the pure step builders, the loop (`loop.train_and_evaluate`), evaluation."""
