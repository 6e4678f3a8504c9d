"""``attnviz text``: placeholder, being written."""
