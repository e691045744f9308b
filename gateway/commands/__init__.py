"""One module per ``gateway`` sub-command."""
