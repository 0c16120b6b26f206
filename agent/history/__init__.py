"""The run history: every run's events in one SQLite database, searchable, migrated in place."""
