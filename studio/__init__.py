"""Shared state and cached data access for the dashboard pages."""
