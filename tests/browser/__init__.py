"""Driving the app in a real browser: the harness shared by tests/test_browser.py and the screenshot script."""
