"""Subcommands of the diffraflow command line, one module each."""
