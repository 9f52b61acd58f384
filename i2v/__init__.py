"""i2v-pipeline library: pure logic, no Prefect imports.

Atlas Cloud client and simulator, manifest reading and checks, storage (local folder
and S3), durable per-input state, and the CLI.
"""

__version__ = "0.1.0"
