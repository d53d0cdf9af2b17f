"""sepconv's service: HTTP API, jobs, storage, SDK and CLI on top of the ``converter`` library.

This package's ``__init__`` imports nothing, so ``service.sdk`` works with only httpx and pydantic installed.
"""
