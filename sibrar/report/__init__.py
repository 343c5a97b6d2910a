"""Report folders: comparison tables, plots and a one-page markdown summary."""
