"""Running a planned job: rendering chunks, the worker's pipeline and engine caches, task runners,
GPU claims and ghost runs."""
