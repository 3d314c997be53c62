"""upload-data.py: the tutorial's upload script, with ``--target local|azure``.

    python control/upload-data.py                  # the local stack (Azurite)
    python control/upload-data.py --target azure   # your Azure ML workspace (config.json)

The only difference from the tutorial: the Azure ML names come from ``connect(args.target)``.
"""

from __future__ import annotations

import argparse
import sys

from sandbox.target import add_target_argument, connect, error_message, known_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Upload ./data to the workspace's default datastore.")
    add_target_argument(parser)
    parser.add_argument("--src-dir", default="./data", help="the folder to upload (default: ./data)")
    args = parser.parse_args(argv)
    try:
        aml = connect(args.target)
        # --- the tutorial's upload-data.py ---
        ws = aml.Workspace.from_config()
        datastore = ws.get_default_datastore()
        datastore.upload(src_dir=args.src_dir,
                         target_path='datasets/cifar10',
                         overwrite=True)
    except known_errors() as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
