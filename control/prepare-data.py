"""Write CIFAR-10 where the tutorial's control scripts expect it (./data), offline.

    python control/prepare-data.py                    # generated, full size (the real byte sizes)
    python control/prepare-data.py --images 2000      # generated, small
    python control/prepare-data.py --real             # the real data set, where the network allows
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a plain script from a checkout without the editable install
    sys.path.insert(0, str(REPO_ROOT))

from sandbox import cifar10  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write CIFAR-10 in torchvision's on-disk layout.")
    parser.add_argument("--out", type=Path, default=Path("data"), help="output directory (default: ./data)")
    parser.add_argument(
        "--images", type=int, default=None, help="training images to generate (default: the full 50,000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated images (default: 0)")
    parser.add_argument("--real", action="store_true", help="download the real data set instead of generating")
    args = parser.parse_args(argv)
    if args.real and args.images is not None:
        parser.error("--images applies to generated data only; drop it or drop --real")
    return args


def progress(message: str) -> None:
    print(f"    {message}", flush=True)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = args.out.absolute()
    start = time.monotonic()
    try:
        if args.real:
            print(f"==> Downloading the real CIFAR-10 into {out}", flush=True)
            paths = cifar10.fetch_real(out)
        else:
            size = "full size" if args.images is None else f"{args.images} training images"
            print(f"==> Generating CIFAR-10 ({size}, seed {args.seed}) into {out}", flush=True)
            paths = cifar10.generate(out, images=args.images, seed=args.seed, progress=progress)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    total = sum(path.stat().st_size for path in paths)
    print(f"==> {len(paths)} files, {total:,} bytes ({total / 1e6:.1f} MB) in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
