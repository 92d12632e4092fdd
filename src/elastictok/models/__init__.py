"""Model families: the interface each provides, their registry, and bundled weights."""
