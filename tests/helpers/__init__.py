"""Test helpers shared by unit and integration tests (subprocess management: `processes`)."""
