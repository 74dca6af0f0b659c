#!/usr/bin/env python3
"""Run a miner: ``python miner.py --bucket NAME --spec run.json --netuid N --wallet.name W --wallet.hotkey H``.

Each window it reduces the segments the plan assigns to its hotkey and writes the signed results to its bucket.
``python miner.py --help`` lists every flag; docs/OPERATIONS.md and the README show full set-ups.
"""
from mapreduce.ops.cli import miner_main

if __name__ == "__main__":
    raise SystemExit(miner_main())
