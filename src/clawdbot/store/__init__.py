"""The database: tables, queries, typed records, platform limits and migrations."""
