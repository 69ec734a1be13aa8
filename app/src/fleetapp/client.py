"""Send the tutorial's ``add`` through the broker, as any client would, and print the result.

    python -m fleetapp.client 4 4 [--queue celery] [--timeout 30]

The broker and result backend come from CELERY_BROKER_URL and CELERY_RESULT_BACKEND. The output
names the worker node that ran the task (the fleet enables extended results for this).
"""

import argparse
import sys

from fleetapp.tasks import add


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetapp.client", description=__doc__.splitlines()[0])
    parser.add_argument("x", type=int)
    parser.add_argument("y", type=int)
    parser.add_argument("--queue", default=None, help="queue to send to (default: the app's default queue)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the result")
    args = parser.parse_args(argv)

    result = add.apply_async((args.x, args.y), queue=args.queue)
    value = result.get(timeout=args.timeout)
    print(f"add({args.x}, {args.y}) = {value}  (task {result.id}, run by {result.worker or 'an unnamed worker'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
