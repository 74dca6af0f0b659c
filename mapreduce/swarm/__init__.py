"""The local swarm: the whole system on one machine, for a first run and for end-to-end tests.

``python -m mapreduce swarm`` starts the embedded S3 server and the local chain, then real processes: peers that
train a small model, ``miner.py`` miners and a ``validator.py`` validator, for a few windows; it prints a table per
window and checks every peer's averaged gradient against the reference mean.
"""
