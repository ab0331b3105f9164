"""Reverse Personalization: the method, free of ComfyUI."""
