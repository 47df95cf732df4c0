"""Inputs: datasets in (data), examples rendered into token ids (rendering), models by name, path or alias
(models), the tiny test model (tiny), and the start every job shares (prepare)."""
