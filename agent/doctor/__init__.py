"""The checks behind `agent doctor`."""
