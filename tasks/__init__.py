"""Thin Prefect tasks over `i2v`: each is one visible step of the pipeline."""

from tasks.generate import submit_generation
from tasks.land import land_video
from tasks.tables import publish_results
from tasks.upload import upload_picture
from tasks.wait import wait_for_video

__all__ = [
    "land_video",
    "publish_results",
    "submit_generation",
    "upload_picture",
    "wait_for_video",
]
