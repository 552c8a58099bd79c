"""Interaction data shared by the applications: user sequences, item content,
readers of data-set folders, and where data sets live (the data dir)."""
