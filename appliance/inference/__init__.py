"""Inference: the model registry, the llama.cpp engine, the local server and its client.

A leaf package: it never opens the appliance database.
"""
