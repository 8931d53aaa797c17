"""Recipes: fit a model from a config and save a checkpoint a predictor can load on its own."""
