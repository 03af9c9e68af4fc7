"""Small shared pieces used by every rcan package: typed configs, atomic IO, the executor."""
