"""Automatic virtual machine activation: an activated, entitled host activates its guests."""
