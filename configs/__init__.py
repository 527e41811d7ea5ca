"""The shipped experiment specs (this folder installs as the package data normbench.configs)."""
