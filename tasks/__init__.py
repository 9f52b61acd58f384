"""Thin Prefect tasks over `i2v`: each is one visible step of the pipeline.

The per-row steps (upload, generate, poll, land) take a micro-batch of rows that reached
the step together (see `i2v.batching`); every row is still settled on its own.
"""

from tasks.generate import submit_generations
from tasks.land import land_videos
from tasks.tables import publish_results
from tasks.upload import upload_pictures
from tasks.wait import wait_for_videos

__all__ = [
    "land_videos",
    "publish_results",
    "submit_generations",
    "upload_pictures",
    "wait_for_videos",
]
