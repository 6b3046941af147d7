"""Tests of the augmented-gallery export."""
