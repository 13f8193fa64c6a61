"""``python -m otel_json_exporter``: the same command line as ``otel-json-exporter``."""

from __future__ import annotations

from otel_json_exporter.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
