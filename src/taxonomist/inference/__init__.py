"""Predictors and batch jobs: a checkpoint in, predictions and their files out."""
