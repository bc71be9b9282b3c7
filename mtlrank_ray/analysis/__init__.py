"""What a finished sweep means: per-gene R² tables (`results`), the baselines
(`baselines`), TF rankings and the network (`rankings`), their evaluation against a
reference network (`evaluation`) and the report (`report`)."""
