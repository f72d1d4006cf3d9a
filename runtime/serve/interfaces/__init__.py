"""People and machines looking in: the HTTP API, the operator's page and its feedback, and the metrics."""
