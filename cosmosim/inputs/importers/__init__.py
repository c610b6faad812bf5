"""Importers of serving engines' routing logs (vLLM, SGLang) and of a plain long table into trace format v1."""
