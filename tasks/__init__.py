"""Thin Prefect tasks over `i2v`: each is one visible step of the pipeline.

The per-row steps (upload, generate, poll, land) take a micro-batch of rows that reached
the step together (see `i2v.batching`); every row is still settled on its own. Each task
has the name of its step in its module, its function, and the UI.
"""
