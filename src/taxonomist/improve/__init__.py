"""Loops that generate with a predictor and train on what it generated (self-consistency DPO).

They need both sides, so they live above ``training`` and ``inference``, which never import each other.
"""
