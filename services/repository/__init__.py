"""The model repository: load (single flight), unload, list, resolve names; model identity."""
