"""PostgreSQL collectors: connections, database, statements, tables."""
