"""The click path: router process, join agent, profile agent, recommendation API."""
