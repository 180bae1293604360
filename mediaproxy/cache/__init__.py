"""Caches shared by originals and results: memory LRU by bytes, atomic disk cache, single-flight."""
