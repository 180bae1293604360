"""The three URL services: each turns a typed request into an HTTP response using media, origins and caches."""
