"""What the edge's and the hub's schemathesis runs check (test_fuzz_api.py, test_fuzz_hub.py)
and how many examples they send per operation."""

from __future__ import annotations

import os

from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

# small under make test, hundreds under make fuzz
EXAMPLES = int(os.environ.get("LINESIDE_FUZZ_EXAMPLES", "8"))
# negative_data_rejection is left out: it takes a 413 for accepting the data, and pydantic's
# lax datetimes (until=0.5 is 1970-01-01T00:00:00.5Z) for a bug
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, unsupported_method,
          missing_required_header]
