"""rq jobs: importable without side effects, take ids, idempotent."""
