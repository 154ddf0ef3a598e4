"""The output folder on disk: its layout (``layout``: every folder and file name, defined once),
atomic writes, frame digests, stale temporary files and stitching. No Prefect."""
