"""Helpers shared by the test modules (conftest.py only holds fixtures)."""
