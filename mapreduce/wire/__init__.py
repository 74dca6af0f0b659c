"""The object format: names, keys, the hash tree, signing, the codec, the verified range reader, and what each
signed record looks like. Knows nothing of HTTP, the chain or the roles."""
