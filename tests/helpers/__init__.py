"""Test helpers: tiny offline models and data, files, launch scripts. No tests here."""
