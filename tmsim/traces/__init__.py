"""Storage: trace format v1 (Parquet), reading and writing, read-only SQL views, the library summary and the one
tree index. Nothing here trains or scores."""
from .format import (EPOCHS, DECISIONS, RUNS, SCHEMA_VERSION, TABLES, Library, TraceError, content_hash, dumps,
                     file_metadata, load_library, read_table, table_files, write_table)
from .index import TreeIndex

__all__ = ["DECISIONS", "EPOCHS", "RUNS", "SCHEMA_VERSION", "TABLES", "Library", "TraceError", "TreeIndex",
           "content_hash", "dumps", "file_metadata", "load_library", "read_table", "table_files", "write_table"]
