#!/usr/bin/env python3
"""Run a validator: ``python validator.py --bucket NAME --spec run.json --netuid N --wallet.name W --wallet.hotkey H``.

Each window it samples miners' outputs with ranged reads, recomputes them from the signed inputs, scores the
miners and sets weights. ``python validator.py --help`` lists every flag.
"""
from mapreduce.ops.cli import validator_main

if __name__ == "__main__":
    raise SystemExit(validator_main())
