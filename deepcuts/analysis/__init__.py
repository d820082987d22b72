"""Analysis of finished runs, built only from the outputs contract of the run folders."""
