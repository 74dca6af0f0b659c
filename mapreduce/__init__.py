"""S3-staged map-reduce for decentralized training: the protocol.

Peers split their flat gradient into segments and upload them, signed, to the buckets of the miners the window's
plan assigns; miners reduce each segment (mean, fp32 accumulation) and write the reduced slice back; peers
reassemble the average; validators sample, recompute and score. This package holds the protocol and knows nothing
of HTTP: bytes move through :mod:`storage`.
"""
