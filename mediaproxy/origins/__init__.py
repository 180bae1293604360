"""Where originals come from (a local folder or an upstream HTTP server) and the store that remembers them."""
