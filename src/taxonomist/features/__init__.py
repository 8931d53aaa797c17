"""Features computed once and cached on disk: image embeddings by backbone, text embeddings by encoder.

Sits above ``models`` (it runs their encoders) and below the recipes and predictors that read it, so
training and inference share one cache without importing each other.
"""
