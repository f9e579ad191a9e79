"""Fusion methods, each a short function of neuron groups built on :mod:`fusion.alignment`."""
