"""NAR archives: the sans-IO parser and encoder, their blocking and trio drivers, and listings."""
