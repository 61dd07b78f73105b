"""Built-in trainer behaviours: progress, CSV and TensorBoard logging, sample grids, early stopping."""
