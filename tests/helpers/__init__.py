"""Test helpers shared by unit and integration tests (subprocess management: `processes`)."""

# One part-3 correction per sample (sampling jobs make three by default): tests that count written
# items, and the reliability harness, keep one candidate per sample.
ONE_CORRECTION = ("encoder_truncation:coarse=0.3,middle=0.3,fine=0.3",)
