"""Tools for developing and checking the product: the demo atlas (`demo`), the
notebook's reference model (`seed_model`) and the benchmarks (`bench`,
`sweep_bench`, `atlas_bench`)."""
