"""The typer command-line app; the one place where errors become messages and exit codes."""
