"""Meta-learning: the adapter, episodes, MAML, model snapshots and the training round."""
