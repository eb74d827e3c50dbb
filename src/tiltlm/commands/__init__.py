"""The `tilt` command line: one module per subcommand family; cli.py builds the parser."""
