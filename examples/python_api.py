"""The animate flow called from Python (ephemeral Prefect unless PREFECT_API_URL is set).

    python examples/python_api.py [--out out/python-api]

Renders the cat photo through a prompt sequence with the tiny offline model and prints the
result: paths of the frames, GIF, MP4, contact sheet, timings and the engine's UNet calls.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

from flows import AnimationJob, animate  # noqa: E402

CAT = ROOT / "examples" / "jobs" / "sources" / "chelsea.jpg"  # shipped with the example jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/python-api")
    args = parser.parse_args()
    job = AnimationJob(
        source={"image": str(CAT), "prompt": "a photo of a cat", "subject": "cat"},
        frames={"prompts": ["a photo of a cat sitting", "a photo of a cat standing", "a photo of a cat jumping"]},
        model={"model": "tiny"},
        settings={"width": 64, "height": 64, "steps": 10, "start_step": 2},
        output={"folder": args.out, "fps": 6},
    )
    result = animate(job)
    print(result.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
