"""Prefect flows: the batch pipeline, its fan-out over workers, and the S3 inbox."""
