"""The thin command line: parse, call one ops function, render. Errors map to exit codes in main."""
