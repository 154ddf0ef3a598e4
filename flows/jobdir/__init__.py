"""The one owner of an output folder's layout: file names, atomic writes, frame digests, stale
temporary files and stitching. No Prefect."""
